#pragma once
#include "core/tensor.h"

namespace kite::ops {
// out[i, :] = table[ids[i], :] converted to out's dtype.
// CPU:  table: [vocab, d] F32|BF16|F16; ids: [n] I32 (each in [0, vocab)); out: [n, d] F32.
// CUDA: table: [vocab, d] F32|BF16; ids: [n] I32 on the device; out: [n, d] F32|BF16.
// The ids are checked on the host first (a small copy when they live on a device).
void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
// A vocabulary shard's lookup (tensor parallelism): table holds the rows of
// ids [first_id, first_id + rows); out[i, :] = table[ids[i] - first_id, :], or
// zeros when ids[i] falls outside the shard. ids are not checked against the
// full vocabulary here (the caller does). Same dtypes as embedding.
void embedding_shard(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out);
}  // namespace kite::ops
