#pragma once
#include "core/tensor.h"

namespace kite::ops {
// y = x @ w^T (+ bias), the layout of torch.nn.Linear.
// x: [n, k] F32; w: [m, k] F32|BF16|F16; bias: [m] (same dtypes) or null; y: [n, m] F32.
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);
}  // namespace kite::ops
