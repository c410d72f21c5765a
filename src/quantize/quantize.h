#pragma once
// Post-training quantization of a loaded decoder, layer by layer: the
// calibration activations of layer l are computed with layers < l (and the
// earlier linears of layer l) already quantized, so each quantizer sees the
// inputs the quantized model will really give it. Peak memory: the hidden
// states of the calibration set plus one layer's working set.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/quant_weight.h"
#include "model/decoder.h"

namespace kite {

enum class QuantMethod { Int8, W8A8, Int4, Nf4, Fp8, Gptq, Awq };
std::string_view quant_method_name(QuantMethod m);  // "int8", "w8a8", "int4", "nf4", "fp8", "gptq", "awq"
// Parses a method name; throws kite::Error(source, "method", ...) listing the valid ones.
QuantMethod parse_quant_method(const std::string& name, const std::string& source);

// What one linear gets.
struct ModuleQuant {
  bool skip = false;  // keep it dense
  QuantMethod method = QuantMethod::Int8;
  int bits = 8;
  int64_t group = 0;  // 0: the method's default
  bool symmetric = true;
};

// A per-module override: modules whose name ("model.layers.3.mlp.down_proj",
// "lm_head") matches `pattern` (glob: * any run, ? one character) take the
// fields that are set.
struct QuantOverride {
  std::string pattern;
  bool skip = false;
  std::optional<QuantMethod> method;
  std::optional<int> bits;
  std::optional<int64_t> group;
  std::optional<bool> symmetric;
  int line = 0;  // in the YAML file, for messages
};
// Reads overrides from YAML: a mapping of pattern -> {method, bits, group_size,
// sym} or pattern -> skip. Throws kite::Error naming the file and line.
std::vector<QuantOverride> load_quant_overrides(const std::string& path);

struct QuantizeOptions {
  QuantMethod method = QuantMethod::Int8;
  int bits = 0;       // 0: the method's default (8 for int8/w8a8/fp8, 4 otherwise)
  int64_t group = 0;  // 0: the method's default (int4/gptq/awq 128, nf4 64, int8 per channel)
  bool symmetric = true;
  bool act_order = false;        // GPTQ
  double damp = 0.01;            // GPTQ
  bool fp8_per_tensor = false;   // FP8 weight scales: per tensor instead of per channel
  bool fp8_static_act = false;   // FP8 activations: calibrated static scale instead of dynamic per token
  bool kv_cache_fp8 = false;     // calibrate per-layer FP8 K/V scales
  double smoothquant_alpha = 0;  // W8A8: migrate activation outliers (0 = off; 0.5 typical)
  bool nf4_double_quant = true;
  std::vector<QuantOverride> overrides;
  // Calibration: `calib_samples` windows of `calib_seqlen` tokens at seeded
  // random offsets of the calibration token stream (BOS first in each).
  std::vector<int32_t> calib_tokens;
  int64_t calib_samples = 128, calib_seqlen = 512;
  uint64_t seed = 0;
  std::function<void(const std::string& what, int64_t done, int64_t total)> progress;

  // Throws kite::Error("kite quantize", field, ...) on bad combinations;
  // with check_calibration, also when calibration is needed but too short.
  void validate(const ModelConfig& config, bool check_calibration = true) const;
  // The resolved settings of one module (method defaults + overrides).
  ModuleQuant module(const std::string& name) const;
  bool needs_calibration() const;
};

struct LinearReport {
  std::string name;
  ModuleQuant quant;
  double bits_per_weight = 0;
  double weight_rel_error = 0;  // ||W - dq(Q)||_F / ||W||_F (W as the quantizer saw it)
  double weight_max_error = 0;
  double scale_min = 0, scale_max = 0, scale_mean = 0;
  double zero_min = 0, zero_max = 0;
  double gptq_loss = -1;  // GPTQ's proxy loss, when GPTQ ran
};

struct QuantizeReport {
  std::vector<LinearReport> linears;
  std::vector<float> k_scales, v_scales;  // per layer, when kv_cache_fp8
  double seconds = 0;
  int64_t calib_tokens = 0;
};

// Quantizes `model`'s linears in place (norms may change too: AWQ and
// SmoothQuant fold their scales into them).
QuantizeReport quantize_model(DecoderModel& model, const QuantizeOptions& options);

// Glob match of a module name (* and ?).
bool glob_match(std::string_view pattern, std::string_view name);

}  // namespace kite
