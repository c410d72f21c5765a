#pragma once
#include "core/tensor.h"

namespace kite::ops {
// The residual add and the next RMSNorm of a decoder layer, fused:
//   residual += x                          (in place, rounded to residual's dtype)
//   out = rms_norm(residual, weight, eps)  (of the updated, rounded residual)
// Equal to ops::add(residual, x, residual) then ops::rms_norm(residual, weight,
// eps, out) (bitwise on the CPU), reading and writing each row once.
// x, residual, out: [n, d], one dtype: F32 on the CPU, F32 or BF16 on CUDA;
// weight: [d] F32|BF16 (F16 too on the CPU). out may be x itself; out and x
// must not overlap residual.
void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out);
}  // namespace kite::ops
