// y = x @ w^T (+ bias) on the CPU: splits the output columns (weight rows)
// across threads and hands each range to the kernel of the SIMD level
// (linear_{scalar,avx2,avx512}.cpp). Every weight byte is read by exactly
// one thread, which suits decode (n = 1, memory bound); within a thread the
// kernels tile the rows so prefill reuses each weight tile across x rows.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/linear_kernels.h"
#include "backend/cpu/vec.h"
#include "core/parallel.h"

namespace kite::cpu {

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, SimdLevel level) {
  level = clamp_simd_level(level);
  const int64_t n = x.dim(0), k = x.dim(1), m = w.dim(0);
  if (n == 0 || m == 0) return;
  std::vector<float> b;  // [m] bias in F32
  if (bias) {
    b.resize(size_t(m));
    vec_ops(level).to_f32(bias->data(), bias->dtype(), b.data(), m);
  }
  const LinearArgs args{
      x.data_as<const float>(), w.data(), bias ? b.data() : nullptr, y.data_as<float>(), n, k, m, w.dtype()};
  void (*cols)(const LinearArgs&, int64_t, int64_t) = level == SimdLevel::Avx512 ? linear_cols_avx512
                                                      : level == SimdLevel::Avx2 ? linear_cols_avx2
                                                                                 : linear_cols_scalar;
  // Work in groups of 4 weight rows (the kernels' column blocking); enough
  // multiply-adds per chunk that tiny layers stay on one thread.
  constexpr int64_t kGroup = 4;
  const int64_t groups = (m + kGroup - 1) / kGroup;
  const int64_t macs_per_group = kGroup * k * n;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, macs_per_group));
  parallel_for(groups, grain, [&](int64_t g0, int64_t g1) { cols(args, g0 * kGroup, std::min(g1 * kGroup, m)); });
}

}  // namespace kite::cpu
