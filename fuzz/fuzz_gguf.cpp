// libFuzzer target: the GGUF reader must reject any malformed input with
// kite::Error (never crash, hang or over-allocate); typed getters, arrays,
// dequantization and the model-config mapping must be safe on what it accepts.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/gguf.h"

namespace {

uint64_t exercise(const kite::GgufFile& f) {
  uint64_t sum = 0;
  for (const std::string& key : f.keys()) {
    const kite::GgufValue* v = f.find_value(key);
    try {
      switch (v->type) {
        case kite::GgufValueType::String: sum += f.get_string(key).size(); break;
        case kite::GgufValueType::Bool: sum += *f.find_bool(key); break;
        case kite::GgufValueType::F32:
        case kite::GgufValueType::F64: sum += uint64_t(f.get_float(key) != 0); break;
        case kite::GgufValueType::Array:
          if (v->elem_type == kite::GgufValueType::String) {
            sum += f.get_string_array(key).size();
          } else {
            sum += f.get_float_array(key).size();
            sum += f.get_int64_array(key).size();
            sum += f.get_int_array(key).size();
          }
          break;
        default: sum += uint64_t(f.get_int(key)); break;
      }
    } catch (const kite::Error&) {
    }
  }
  for (const kite::GgufTensorInfo& info : f.tensors()) {
    if (!kite::ggml_can_dequantize(info.type)) continue;
    kite::Tensor t = f.dequantize(info.name);
    if (t.numel() > 0) sum += uint64_t(t.data_as<float>()[t.numel() - 1] != 0);
  }
  try {
    kite::ModelConfig c = kite::gguf_model_config(f);
    sum += uint64_t(c.num_layers);
  } catch (const kite::Error&) {
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = kite::GgufFile::from_memory(data, size, "fuzz.gguf");
    volatile uint64_t sink = exercise(*f);
    (void)sink;
  } catch (const kite::Error&) {
  }
  return 0;
}
