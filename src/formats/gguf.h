#pragma once
// GGUF (llama.cpp) files, versions 2 and 3, read in place from a memory map:
// metadata key/values, tensor infos, and dequantization of the common ggml
// block formats to float32.
//
// Shapes: ggml lists dimensions innermost first (ne[0] is contiguous). Kite
// is row-major, so GgufTensorInfo::shape is ne reversed: a ggml [4096, 32000]
// token embedding is Kite [32000, 4096].
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"
#include "formats/hf_config.h"

namespace kite {

class MappedFile;

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
};

// "Q4_K", "F16", ... or "type 42" for an unknown value.
std::string ggml_type_name(GgmlType t);

// Block geometry of a ggml type: `block_elems` elements are stored in
// `block_bytes` bytes. nullopt for types whose layout Kite does not know.
struct GgmlBlockLayout {
  int64_t block_elems;
  size_t block_bytes;
};
std::optional<GgmlBlockLayout> ggml_block_layout(GgmlType t);
// True for the types dequantize_ggml handles: F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q4_K, Q6_K, Q8_K.
bool ggml_can_dequantize(GgmlType t);
// Dequantizes `n` elements (a multiple of the block size) from `src` to
// `dst`. KITE_CHECKs that the type is supported and n is whole blocks.
void dequantize_ggml(GgmlType type, const void* src, float* dst, int64_t n);

class GgufFile;

// A 2-D linear weight stored as Q8_0 or Q4_0, mapped exactly (never through
// F32) onto Kite's layouts (core/quant_weight.h), group 32, one ggml block
// per group:
//   Q8_0 -> Int8: codes copied, scales = float(d).
//   Q4_0 -> Int4: zeros 8 (symmetric), scales = float(d), nibbles repacked
//           from ggml's order (element j of a block in the low nibble of byte
//           j, element j + 16 in its high nibble) to Kite's (element i in
//           byte i / 2, low nibble for even i).
// dequantize() of the result equals dequantize_ggml bit for bit. nullopt for
// every other type (the caller dequantizes those). Throws Error(path, name,
// ...) when the tensor is missing, not 2-D, or its rows are not whole blocks.
std::optional<QuantWeight> gguf_quant_weight(const GgufFile& f, const std::string& name);

// Metadata value types as stored in the file.
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
std::string gguf_value_type_name(GgufValueType t);  // "uint32", "string", "array", ...

// One metadata value. Scalars are decoded at open; arrays stay in the file
// (offset/count) and are decoded by the typed array getters.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  // Scalars: exactly one of these is meaningful, by `type`.
  int64_t i = 0;   // signed integer types, and unsigned ones up to INT64_MAX
  uint64_t u = 0;  // unsigned integer types
  double f = 0;    // F32/F64
  bool b = false;
  std::string s;
  // Arrays.
  GgufValueType elem_type = GgufValueType::U8;
  uint64_t count = 0;
  size_t offset = 0;  // of the first element within the file
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  Shape shape;        // row-major (reversed ggml ne)
  size_t offset = 0;  // absolute file offset
  size_t nbytes = 0;
};

class GgufFile {
 public:
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // Parses bytes held elsewhere (fuzzers, embedded data). The bytes are not
  // copied: `owner` keeps them alive (may be null if the caller guarantees
  // they outlive the GgufFile). `name` stands for the path in errors.
  static std::shared_ptr<GgufFile> from_memory(const uint8_t* data, size_t size, const std::string& name,
                                               std::shared_ptr<const void> owner = nullptr);

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // start of the tensor data section

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GgufValue* find_value(const std::string& key) const;
  std::vector<std::string> keys() const;  // sorted

  // Typed getters throw Error(path, key, "expected <type>, found <type>")
  // or Error(path, key, "missing"); find_* return nullopt when absent and
  // throw on a wrong type.
  std::string get_string(const std::string& key) const;
  std::optional<std::string> find_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;  // any integer type
  std::optional<int64_t> find_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // float or integer types
  std::optional<double> find_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::optional<bool> find_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;  // float or integer elements
  std::vector<int32_t> get_int_array(const std::string& key) const;  // integer elements in int32 range
  std::vector<int64_t> get_int64_array(const std::string& key) const;
  uint64_t array_size(const std::string& key) const;                      // throws unless an array
  std::optional<GgufValueType> array_type(const std::string& key) const;  // nullopt unless an array

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // A zero-copy view of the raw tensor bytes for F32/F16/BF16 tensors (as
  // the matching DType); throws for quantized types.
  Tensor tensor(const std::string& name) const;
  // Pointer to the raw (possibly quantized) bytes of a tensor.
  const uint8_t* tensor_data(const GgufTensorInfo& info) const { return data_ + info.offset; }
  Tensor dequantize(const std::string& name) const;  // F32 CPU tensor, row-major shape

 private:
  GgufFile() = default;
  void parse();
  const GgufValue& require(const std::string& key, const char* want) const;
  [[noreturn]] void wrong_type(const std::string& key, const GgufValue& v, const char* want) const;

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::shared_ptr<const void> owner_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Model hyperparameters from GGUF metadata (general.architecture = "llama",
// "mistral", "qwen2" or "qwen3"; keys <arch>.block_count, .embedding_length,
// .feed_forward_length, .attention.head_count(_kv), .rope.freq_base, ...).
// Validated like parse_model_config.
ModelConfig gguf_model_config(const GgufFile& f);

}  // namespace kite
