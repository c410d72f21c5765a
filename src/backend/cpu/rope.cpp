// Rotary position embedding in place ("rotate half" layout).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/parallel.h"

namespace kite::cpu {

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor) {
  const int64_t n = x.dim(0), heads = x.dim(1), hd = x.dim(2), r = inv_freq.dim(inv_freq.ndim() - 1);
  const int64_t freq_stride = inv_freq.ndim() == 2 ? r : 0;  // [r] shared, or [n, r] a row per token
  const int32_t* pos = positions.data_as<const int32_t>();
  const float* freqs = inv_freq.data_as<const float>();
  float* px = x.data_as<float>();  // [n, heads, hd]
  parallel_for(n, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(size_t(2 * r));  // [2, r]: cos then sin of this row's angles
    for (int64_t i = begin; i < end; ++i) {
      const float* freq = freqs + i * freq_stride;
      for (int64_t j = 0; j < r; ++j) {
        // The angle in F32 like the reference (positions * inv_freq in float32),
        // then cos/sin of that float, evaluated in double and rounded.
        const float a = float(pos[i]) * freq[j];
        cs[size_t(j)] = float(std::cos(double(a))) * attention_factor;
        cs[size_t(r + j)] = float(std::sin(double(a))) * attention_factor;
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* row = px + (i * heads + h) * hd;
        for (int64_t j = 0; j < r; ++j) {
          const float x1 = row[j], x2 = row[j + r], c = cs[size_t(j)], s = cs[size_t(r + j)];
          row[j] = x1 * c - x2 * s;
          row[j + r] = x2 * c + x1 * s;
        }
      }
    }
  });
}

}  // namespace kite::cpu
