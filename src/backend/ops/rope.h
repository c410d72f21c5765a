#pragma once
#include "core/tensor.h"

namespace kite::ops {
// Rotary position embedding in place, "rotate half" layout (HF Llama): for
// j < r, with angle a = positions[i] * f[j] (f = inv_freq, or row i of a 2-D
// inv_freq),
//   x1 = x[i, h, j], x2 = x[i, h, j + r]
//   x[i, h, j]     = (x1 * cos a - x2 * sin a) * attention_factor
//   x[i, h, j + r] = (x2 * cos a + x1 * sin a) * attention_factor
// Dims past 2r (partial rotary) are left alone.
// x: [n, n_heads, head_dim] F32 (CUDA: BF16 too, math in F32, one rounding per
// element); positions: [n] I32; inv_freq: [r] F32 with 2r <= head_dim, or
// [n, r] F32 (row i for token i: frequencies that differ per sequence, as
// dynamic NTK scaling gives). A 2-D inv_freq gives bitwise what rope on each
// token with its own row as a 1-D inv_freq gives.
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor);
}  // namespace kite::ops
