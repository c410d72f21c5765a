#pragma once
#include "core/tensor.h"

namespace kite::ops {

// Stores new K/V rows into a paged cache: row t goes to slot
// slot_mapping[t] = block * block_size + offset; a slot of -1 skips the row
// (padding). Slots must be distinct and inside the cache
// ([0, num_blocks * block_size)); otherwise kite::Error is raised before
// anything is written.
//
// k, v:         [n_tokens, n_kv_heads, head_dim] F32 (CPU) | BF16 (CUDA)
// slot_mapping: [n_tokens] I32 (on k's device)
// k_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of k
// v_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of k
void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache);

}  // namespace kite::ops
