#pragma once
// Conversions between Kite's internal quantized weights (core/quant_weight.h)
// and the checkpoint layouts of the ecosystem, so that checkpoints written by
// AutoGPTQ / GPTQModel, AutoAWQ, compressed-tensors (llm-compressor, read by
// vLLM) and bitsandbytes (transformers' 4-bit serialization) load into Kite,
// and Kite writes checkpoints those tools load. docs/quant-formats.md
// describes every layout bit by bit; the short version:
//
//   GPTQ     qweight I32 [in / (32/b), out], qzeros I32 [G, out / (32/b)],
//            scales F16 [G, out], g_idx I32 [in]; fields packed LSB first;
//            v1 ("gptq") stores zero - 1, v2 ("gptq_v2") the zero itself.
//   AWQ      qweight I32 [in, out / 8], qzeros I32 [G, out / 8], scales F16
//            [G, out]; nibble k of a word holds column 8c + [0,2,4,6,1,3,5,7][k].
//   compressed-tensors
//            float-quantized: weight F8_E4M3 [out, in], weight_scale [out, 1]
//              or [1], input_scale [1] (static activations);
//            int-quantized:   weight I8 [out, in], weight_scale [out, G];
//            pack-quantized:  weight_packed I32 [out, ceil(in / (32/b))]
//              (code + 2^(b-1), LSB first), weight_shape I64 [2],
//              weight_scale [out, G], weight_zero_point I32 [ceil(out /
//              (32/b)), G] (asymmetric only), weight_g_idx I32 [in].
//   bitsandbytes NF4
//            weight U8 [(out*in+1)/2, 1] (row-major elements, high nibble
//            first), weight.absmax F32 [n/64] (or U8 with double quant plus
//            weight.nested_absmax / nested_quant_map), weight.quant_map F32
//            [16], weight.quant_state.bitsandbytes__nf4 (JSON bytes).
//
// Tensors are named by the suffix after the module prefix ("qweight",
// "weight_scale", "weight.absmax", ...); the caller adds
// "model.layers.0.mlp.down_proj." in front. Every reader checks names,
// dtypes and shapes and throws kite::Error(source, tensor name, what was
// expected) on anything malformed; nothing here crashes on bad input.
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"
#include "formats/safetensors.h"

namespace kite::quant {

// suffix -> CPU tensor, in the order a tool writes them.
using TensorMap = std::vector<std::pair<std::string, Tensor>>;
// suffix -> tensor, or nullopt when the checkpoint has no such tensor.
using TensorGetter = std::function<std::optional<Tensor>(const std::string& suffix)>;

// Getters over a map or a checkpoint, which must outlive them.
TensorGetter getter_of(const TensorMap& tensors);
// Tensors `prefix + suffix` of a checkpoint (prefix e.g. "model.layers.0.mlp.up_proj.").
TensorGetter getter_of(const Checkpoint& checkpoint, const std::string& prefix);

// ---- act-order (desc_act) -------------------------------------------------
// Kite: packed column j holds input column perm[j] and groups run over packed
// columns (j / group). GPTQ / compressed-tensors: weights stay in input order
// and g_idx[i] is the group of input column i. So g_idx[perm[j]] = j / group.
std::vector<int32_t> perm_to_g_idx(const std::vector<int32_t>& perm, int64_t group);
// The inverse: input columns stably sorted by g_idx. Every group must hold
// exactly `group` columns (what GPTQ produces); throws kite::Error(source,
// field, ...) otherwise. Returns an empty vector when the order is the
// identity (g_idx[i] == i / group), i.e. no permutation is needed.
std::vector<int32_t> g_idx_to_perm(const std::vector<int32_t>& g_idx, int64_t group, const std::string& source,
                                   const std::string& field);

// ---- AutoGPTQ / GPTQModel ---------------------------------------------------
enum class GptqFormat : uint8_t { V1, V2 };  // checkpoint_format "gptq" / "gptq_v2"

// Int4 (bits 4) or Int8 (bits 8, written as unsigned code q + 128 with zero
// 128) weight-only. Scales are converted to scale_dtype (F16 by convention:
// exact only for F16-representable scales). Int4 zeros must be integers in
// [0, 15]; v1 cannot hold zero 0 (it stores zero - 1) and throws.
TensorMap to_gptq(const QuantWeight& w, GptqFormat format = GptqFormat::V1, DType scale_dtype = DType::F16);
// group: the config's group_size (-1: per channel). sym: qzeros may be absent
// (zero 2^(bits-1)); 8-bit needs zero 128 everywhere (Kite's Int8 is
// symmetric). v1 zeros are decoded as GPTQModel does (the packed word plus
// 0x11111111 / 0x01010101), equal to AutoGPTQ's per-field "+1" whenever no
// field is at its maximum.
QuantWeight from_gptq(const TensorGetter& get, int64_t out, int64_t in, int bits, int64_t group, bool sym,
                      GptqFormat format, const std::string& source);

// ---- AutoAWQ (GEMM) ---------------------------------------------------------
// Int4 without perm; zeros integers in [0, 15] (stored as they are).
TensorMap to_awq(const QuantWeight& w, DType scale_dtype = DType::F16);
QuantWeight from_awq(const TensorGetter& get, int64_t out, int64_t in, int64_t group, const std::string& source);

// ---- compressed-tensors -----------------------------------------------------
// float-quantized: Fp8 weight; act None (W8A16), Fp8Token or Fp8Static
// (writes input_scale). Scales in scale_dtype (F32: lossless).
TensorMap to_ct_fp8(const QuantWeight& w, DType scale_dtype = DType::F32);
// Per-channel or per-tensor from weight_scale's shape; act from the config.
QuantWeight from_ct_fp8(const TensorGetter& get, int64_t out, int64_t in, ActQuant act, const std::string& source);
// int-quantized: Int8 weight, act Int8Token (W8A8) or None (W8A16; vLLM
// only runs W8A16 from pack-quantized, see to_ct_packed).
TensorMap to_ct_int8(const QuantWeight& w, DType scale_dtype = DType::F32);
// group: -1 per channel (a per-tensor [1] scale is accepted and broadcast).
QuantWeight from_ct_int8(const TensorGetter& get, int64_t out, int64_t in, int64_t group, ActQuant act,
                         const std::string& source);
// pack-quantized (W4A16 / W8A16): Int4 (symmetric: every zero 8; else zeros
// in [0, 15] written as weight_zero_point) or Int8 (symmetric only).
TensorMap to_ct_packed(const QuantWeight& w, bool symmetric, DType scale_dtype = DType::F32);
QuantWeight from_ct_packed(const TensorGetter& get, int64_t out, int64_t in, int bits, int64_t group, bool symmetric,
                           const std::string& source);
// FP8 KV-cache scales of one attention module (k stored as k / k_scale):
// {"k_scale": F32 [1], "v_scale": F32 [1]}, suffixes under "...self_attn.".
TensorMap to_ct_kv_scales(float k_scale, float v_scale);
// Reads k_scale / v_scale ([] or [1], any float dtype), or the older
// k_proj.output_scale / v_proj.output_scale; nullopt when neither is there.
std::optional<std::pair<float, float>> from_ct_kv_scales(const TensorGetter& get, const std::string& source);

// ---- bitsandbytes 4-bit (transformers serialization) ------------------------
// Nf4 with a block size bitsandbytes accepts (32 ... 4096; 64 is the
// default). double_quant stores the absmax 8-bit: blocks of 256 with bnb's
// signed dynamic map and a float offset, exactly the way a bnb reader
// decodes it. The absmax values must then be ones the 8-bit form holds
// exactly (the output of bnb_double_quant_roundtrip), else kite::Error.
// dtype: the "dtype" recorded in the quant state ("bfloat16", "float16", "float32").
TensorMap to_bnb_nf4(const QuantWeight& w, bool double_quant, const std::string& dtype = "bfloat16");
QuantWeight from_bnb_nf4(const TensorGetter& get, int64_t out, int64_t in, const std::string& source);

// The absmax values a bnb reader sees after Kite double-quantizes `absmax`
// (the quantizer stores these, so Kite's weights equal the file's meaning).
// bnb's algorithm with two choices of Kite's: the offset (bnb: the mean)
// is the mean with 9 significant bits (for a mean near 0 against a wide
// spread: the mean on steps of max |absmax| / 256), and each block's scale
// (bnb: the block's max |absmax - offset|) is rounded up to 9 significant
// bits. Both change the values far less than the 8-bit rounding itself, and
// they let to_bnb_nf4 recover the 8-bit encoding from the values exactly.
std::vector<float> bnb_double_quant_roundtrip(const std::vector<float>& absmax);
// Whether to_bnb_nf4(..., double_quant = true) can store `absmax` exactly.
bool bnb_double_quant_exact(const std::vector<float>& absmax);
// bitsandbytes' create_dynamic_map(signed=True): 256 ascending values in
// [-0.99297, 1], 0 at index 127.
const std::array<float, 256>& bnb_dynamic_map();

// ---- quantization_config (config.json) --------------------------------------
enum class QuantLayout : uint8_t { Gptq, Awq, CompressedFp8, CompressedInt8, CompressedPacked, BnbNf4 };
std::string_view quant_layout_name(QuantLayout layout);  // "gptq", "awq", "ct-fp8", "ct-int8", "ct-packed", "bnb-nf4"

// The options a quantization_config records. Fields a layout does not use
// keep their defaults when parsed.
struct QuantConfigOptions {
  int bits = 4;                                   // Gptq 4|8, Awq 4, CompressedPacked 4|8, CompressedFp8/Int8 8
  int64_t group_size = 128;                       // -1: per output channel
  bool sym = true;                                // Gptq, CompressedPacked (Awq always has zero points: false)
  bool desc_act = false;                          // act-order (g_idx): Gptq, CompressedInt8/Packed
  GptqFormat gptq_format = GptqFormat::V1;        // Gptq
  ActQuant act = ActQuant::None;                  // Compressed*: input activations
  bool weight_per_tensor = false;                 // CompressedFp8/Int8: one weight scale (else per channel / group)
  bool kv_cache_fp8 = false;                      // Compressed*: kv_cache_scheme FP8 (k_scale / v_scale)
  bool double_quant = true;                       // BnbNf4
  std::string compute_dtype = "bfloat16";         // BnbNf4: bnb_4bit_compute_dtype
  std::vector<std::string> ignore = {"lm_head"};  // modules left dense

  bool operator==(const QuantConfigOptions&) const = default;
};

// The "quantization_config" object for config.json in the tool's own
// convention. Throws kite::Error("quantization_config", field, ...) for
// options the layout cannot express.
nlohmann::json quantization_config_for(QuantLayout layout, const QuantConfigOptions& options);

struct ParsedQuantConfig {
  QuantLayout layout = QuantLayout::Gptq;
  QuantConfigOptions options;
  bool operator==(const ParsedQuantConfig&) const = default;
};
// Recognises the configs of all the layouts above (and AutoGPTQ's
// quantize_config.json, which may lack quant_method). Throws
// kite::Error(source, "quantization_config.<field>", ...) for unsupported values.
ParsedQuantConfig parse_quantization_config(const nlohmann::json& config, const std::string& source);

// Dispatch on the layout, after checking that w agrees with the options
// (bits, group, act-order, activations).
TensorMap to_layout(const QuantWeight& w, QuantLayout layout, const QuantConfigOptions& options);
// A module's own bits and group size (GPTQModel's "dynamic" per-module
// overrides) from its tensors' shapes: qweight [in * bits / 32, out],
// scales [in / group, out]; `o` (the config's) where they say nothing.
QuantConfigOptions gptq_module_options(const TensorGetter& get, int64_t in, QuantConfigOptions o);
QuantWeight from_layout(const TensorGetter& get, int64_t out, int64_t in, const ParsedQuantConfig& config,
                        const std::string& source);

// ---- shared by the layout converters (layouts*.cpp) -------------------------
namespace detail {

// get(name) on the CPU, contiguous, after checking dtype and shape (an empty
// `shape` skips the shape check). need() throws when absent.
Tensor need(const TensorGetter& get, const std::string& name, const std::string& source,
            std::initializer_list<DType> dtypes, const Shape& shape);
std::optional<Tensor> maybe(const TensorGetter& get, const std::string& name, const std::string& source,
                            std::initializer_list<DType> dtypes, const Shape& shape);
std::vector<int64_t> int_values(const Tensor& t);  // integer dtypes
// values converted to a float dtype; throws kite::Error(source, name, ...)
// when a finite value does not fit (an F16 scale above 65504).
Tensor float_tensor(const Shape& shape, const std::vector<float>& values, DType dtype, const std::string& source = "",
                    const std::string& name = "");
Tensor int32_tensor(const Shape& shape, const std::vector<uint32_t>& words);

// w's unsigned codes in LOGICAL (input) column order, [out, in]: Int4 the
// nibble u, Int8 q + 128. Checks that perm is a permutation.
std::vector<uint8_t> codes_in_input_order(const QuantWeight& w, const std::string& source);
std::vector<int32_t> perm_values(const QuantWeight& w, const std::string& source);  // empty without perm
// Int4 zeros as integers, each in [lo, hi]; [out * groups].
std::vector<int> integral_zeros(const QuantWeight& w, int lo, int hi, const std::string& source,
                                const std::string& why);
// An Int4 (bits 4) or Int8 (bits 8) weight from unsigned codes in input
// order, scales / zeros [out, G] and an optional perm (empty: none).
QuantWeight make_int_weight(int bits, int64_t out, int64_t in, int64_t group, const std::vector<uint8_t>& codes,
                            std::vector<float> scales, std::vector<float> zeros, const std::vector<int32_t>& perm);
// Throws unless w is `scheme`, validates, has no smooth and its act is one of `acts`.
void check_weight(const QuantWeight& w, std::initializer_list<QuantScheme> schemes,
                  std::initializer_list<ActQuant> acts, const std::string& source);
// A JSON value for an error message: at most ~120 characters, never throws.
std::string show(const nlohmann::json& j);
// A config's group_size (-1 -> in) checked against in.
int64_t resolve_group(int64_t group, int64_t in, const std::string& source);

}  // namespace detail
}  // namespace kite::quant
