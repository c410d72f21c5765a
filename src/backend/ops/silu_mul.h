#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out = silu(gate) * up, elementwise (SwiGLU). silu(g) = g / (1 + exp(-g)).
// gate, up, out: [n, f], one dtype: F32 (CUDA: BF16 too, math in F32); out may alias gate or up.
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);
}  // namespace kite::ops
