#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out = a + b elementwise. a, b, out: same shape and dtype, F32 (CUDA: BF16 too,
// the F32 sum rounded to nearest even); out may alias a or b.
void add(const Tensor& a, const Tensor& b, Tensor& out);
}  // namespace kite::ops
