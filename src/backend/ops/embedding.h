#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out[i, :] = table[ids[i], :] converted to out's dtype.
// CPU:  table: [vocab, d] F32|BF16|F16; ids: [n] I32 (each in [0, vocab)); out: [n, d] F32.
// CUDA: table: [vocab, d] F32|BF16; ids: [n] I32 on the device; out: [n, d] F32|BF16.
// The ids are checked on the host first (a small copy when they live on a device).
void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
}  // namespace kite::ops
