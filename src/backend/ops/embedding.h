#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out[i, :] = table[ids[i], :] converted to F32.
// table: [vocab, d] F32|BF16|F16; ids: [n] I32 (each in [0, vocab)); out: [n, d] F32.
void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
}  // namespace kite::ops
