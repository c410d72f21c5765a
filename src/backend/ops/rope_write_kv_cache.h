#pragma once
#include "core/tensor.h"

namespace kite::ops {

// ops::rope on q (in place) and on k, then ops::write_kv_cache of the
// rotated k and of v, in one pass: what a decoder layer does between its
// QKV projection and paged attention. k itself is read, not modified: its
// rotated rows go only to the cache. The math is ops::rope's (rotate-half
// layout, angle positions[t] * inv_freq[j] in F32, partial rotary leaves
// dims past 2r alone) and the slot rules are ops::write_kv_cache's (-1 skips
// the row's cache write; q is rotated for every row; slots distinct and in
// range, else kite::Error before anything is written).
//
// q:            [n_tokens, n_heads, head_dim] F32 (CPU) | BF16 (CUDA), rotated in place
// k, v:         [n_tokens, n_kv_heads, head_dim], dtype of q
// positions:    [n_tokens] I32 (on q's device)
// inv_freq:     [r] F32 with 2r <= head_dim (on q's device)
// slot_mapping: [n_tokens] I32 (on q's device)
// k_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
// v_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
//
// CPU: bitwise equal to rope(q), rope(copy of k), write_kv_cache. CUDA: the
// same F32 math (cos/sin in double, rounded to F32, then the rotation
// without fused multiply-adds), each result rounded to BF16 once.
void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache);

// The same, reading q, k and v straight out of a fused QKV projection's
// output (ops::linear over the stacked wq, wk, wv rows), with no split
// copies: qkv is only read; the rotated q heads go to q.
//
// qkv:     [n_tokens, n_heads + 2 n_kv_heads, head_dim]: each token's q heads,
//          then its k heads, then its v heads; dtype F32 (CPU) | BF16 (CUDA)
// q:       [n_tokens, n_heads, head_dim], dtype of qkv (output)
// k_cache, v_cache: [num_blocks, block_size, n_kv_heads, head_dim], dtype of qkv
// positions, inv_freq, attention_factor, slot_mapping: as above.
//
// Equal (bitwise) to splitting qkv into q, k, v and calling
// rope_write_kv_cache on them.
void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache);

}  // namespace kite::ops
