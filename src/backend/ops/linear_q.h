#pragma once
#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::ops {
// y = act(x) @ W^T (+ bias) for a weight in one of Kite's quantized layouts
// (core/quant_weight.h), read directly from its packed tensors.
// x: [n, in] F32; w: logical [out, in]; bias: [out] F32|BF16|F16 or null;
// y: [n, out] F32. A Dense weight forwards to ops::linear. w.smooth divides
// x's columns and w.act quantizes x per row first (ActQuant::Int8Token needs
// Int8 weights; Fp8Static needs input_scale > 0).
void linear_q(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y);
}  // namespace kite::ops
