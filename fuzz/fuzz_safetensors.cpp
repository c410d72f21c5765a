// libFuzzer target: the safetensors reader must reject any malformed input
// with kite::Error (never crash, hang or over-allocate), and every tensor it
// accepts must lie inside the input.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = kite::SafetensorsFile::from_memory(data, size, "fuzz.safetensors");
    uint64_t sum = 0;
    for (const kite::TensorInfo& info : f->tensors()) {
      kite::Tensor t = f->tensor(info.name);
      // Touch every byte so the sanitizer checks the view's bounds.
      const auto* p = static_cast<const uint8_t*>(t.data());
      for (size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
      if (t.nbytes() <= (1u << 16) && kite::dtype_is_float(t.dtype())) sum += uint64_t(t.to_floats().size());
    }
    for (const auto& [k, v] : f->metadata()) sum += k.size() + v.size();
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const kite::Error&) {
  }
  return 0;
}
