#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight (accumulated in F32 or wider).
// x, out: [n, d] F32 (out may alias x); weight: [d] F32|BF16|F16.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);
}  // namespace kite::ops
