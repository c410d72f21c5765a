#pragma once
#include "core/tensor.h"

namespace kite::ops {
// y = x @ w^T (+ bias), the layout of torch.nn.Linear.
// CPU:  x: [n, k] F32; w: [m, k] F32|BF16|F16; bias: [m] (same dtypes) or null; y: [n, m] F32.
// CUDA: x: [n, k] BF16; w: [m, k] BF16; bias: [m] BF16 (or F32 when y is F32) or null;
//       y: [n, m] BF16, or F32 (logits); F32 accumulation (cuBLASLt).
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);
}  // namespace kite::ops
