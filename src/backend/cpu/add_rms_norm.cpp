// Fused residual add and RMSNorm: per row, residual += x, then the row of
// rms_norm over the updated residual. The same vector primitives, on the
// same row pointers, as add followed by rms_norm (cpu/elementwise.cpp,
// cpu/rms_norm.cpp), so the results are bitwise equal.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "backend/kernels.h"
#include "core/parallel.h"

namespace kite::cpu {

void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out, SimdLevel level) {
  const VecOps& v = vec_ops(level);
  const int64_t n = x.dim(0), d = x.dim(1);
  std::vector<float> w(static_cast<size_t>(d));  // [d] weight in F32
  v.to_f32(weight.data(), weight.dtype(), w.data(), d);
  const float* px = x.data_as<const float>();  // [n, d]
  float* pr = residual.data_as<float>();       // [n, d]
  float* po = out.data_as<float>();            // [n, d]
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1));
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = pr + i * d;
      v.add(px + i * d, row, row, d);
      const double mean = double(v.sum_squares(row, d)) / double(d);
      const float inv = float(1.0 / std::sqrt(mean + double(eps)));
      v.scale_mul(row, inv, w.data(), po + i * d, d);
    }
  });
}

void register_add_rms_norm(Kernels& table) {
  table.add_rms_norm = [](const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) {
    add_rms_norm(x, residual, w, eps, out, simd_level());
  };
}

}  // namespace kite::cpu
