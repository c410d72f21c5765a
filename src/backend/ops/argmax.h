#pragma once
#include "core/tensor.h"

namespace kite::ops {
// The index of the largest value of each row; the lowest index on ties (as
// torch.argmax). NaN is never chosen while a row has a number.
// x: [m, n] F32 (n >= 1); out: [m] I32 on x's device.
void argmax(const Tensor& x, Tensor& out);
}  // namespace kite::ops
