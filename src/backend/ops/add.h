#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out = a + b elementwise. a, b, out: same shape, F32 (out may alias a or b).
void add(const Tensor& a, const Tensor& b, Tensor& out);
}  // namespace kite::ops
