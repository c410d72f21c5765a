// linear without SIMD: weight rows widened to F32 a few at a time, then
// plain dot products with every x row (four partial sums each).
#include <vector>

#include "backend/cpu/linear_kernels.h"
#include "backend/cpu/vec.h"

namespace kite::cpu {

void linear_cols_scalar(const LinearArgs& a, int64_t j0, int64_t j1) {
  const VecOps& v = vec_ops_scalar();
  const size_t row_bytes = size_t(a.k) * dtype_size(a.wt);
  const int64_t tile = linear_tile_rows(a.k, sizeof(float), 1);
  std::vector<float> wf;  // [rows, k] widened weight rows of the current tile
  for (int64_t t0 = j0; t0 < j1; t0 += tile) {
    const int64_t t1 = t0 + tile < j1 ? t0 + tile : j1;
    wf.resize(size_t((t1 - t0) * a.k));
    for (int64_t j = t0; j < t1; ++j)
      v.to_f32(static_cast<const char*>(a.w) + size_t(j) * row_bytes, a.wt, wf.data() + (j - t0) * a.k, a.k);
    for (int64_t i = 0; i < a.n; ++i) {
      const float* xr = a.x + i * a.k;
      float* yr = a.y + i * a.m;
      for (int64_t j = t0; j < t1; ++j)
        yr[j] = v.dot(xr, wf.data() + (j - t0) * a.k, a.k) + (a.bias ? a.bias[j] : 0.0f);
    }
  }
}

}  // namespace kite::cpu
