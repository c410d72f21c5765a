#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out = silu(gate) * up, elementwise (SwiGLU). silu(g) = g / (1 + exp(-g)).
// gate, up, out: [n, f], one dtype: F32 (CUDA: BF16 too, math in F32); out may alias gate or up.
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// silu_mul over the output of a fused gate/up projection, without splitting
// it first: out[i, j] = silu(gate_up[i, j]) * gate_up[i, f + j].
// gate_up: [n, 2f]; out: [n, f], gate_up's dtype (F32; CUDA: BF16 too, math
// in F32); out must not overlap gate_up. Same values as silu_mul on the two
// halves.
void silu_mul_fused(const Tensor& gate_up, Tensor& out);
}  // namespace kite::ops
