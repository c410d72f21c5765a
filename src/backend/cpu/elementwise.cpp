// Elementwise CPU kernels: add and silu_mul.
#include <algorithm>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "core/parallel.h"

namespace kite::cpu {

namespace {
// Elements per parallel chunk: small tensors (decode) stay on one thread.
constexpr int64_t kElementGrain = 1 << 14;
}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out, SimdLevel level) {
  const VecOps& v = vec_ops(level);
  const float* pa = a.data_as<const float>();
  const float* pb = b.data_as<const float>();
  float* po = out.data_as<float>();
  parallel_for(out.numel(), kElementGrain,
               [&](int64_t begin, int64_t end) { v.add(pa + begin, pb + begin, po + begin, end - begin); });
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out, SimdLevel level) {
  const VecOps& v = vec_ops(level);
  const float* pg = gate.data_as<const float>();
  const float* pu = up.data_as<const float>();
  float* po = out.data_as<float>();
  parallel_for(out.numel(), kElementGrain / 4,
               [&](int64_t begin, int64_t end) { v.silu_mul(pg + begin, pu + begin, po + begin, end - begin); });
}

void silu_mul_fused(const Tensor& gate_up, Tensor& out, SimdLevel level) {
  const VecOps& v = vec_ops(level);
  const int64_t n = out.dim(0), f = out.dim(1);
  if (n == 0 || f == 0) return;
  const float* pg = gate_up.data_as<const float>();  // [n, 2f]
  float* po = out.data_as<float>();                  // [n, f]
  parallel_for(n, std::max<int64_t>(1, kElementGrain / 4 / f), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) v.silu_mul(pg + i * 2 * f, pg + i * 2 * f + f, po + i * f, f);
  });
}

}  // namespace kite::cpu
