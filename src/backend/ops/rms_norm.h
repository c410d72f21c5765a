#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight (accumulated in F32 or wider).
// CPU:  x, out: [n, d] F32 (out may alias x); weight: [d] F32|BF16|F16.
// CUDA: x, out: [n, d] BF16 or F32, one dtype (out may alias x); weight: [d] F32|BF16.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);
}  // namespace kite::ops
