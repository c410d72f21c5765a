#pragma once
#include "core/tensor.h"

namespace kite::ops {

// What the rotary ops take besides the rotation itself. Default: nothing
// else (no per-head norm), the ops' behaviour before these options existed.
struct RopeOptions {
  // Qwen3's per-head RMSNorm of q and k before the rotation: each q head
  // (head_dim values) becomes x / sqrt(mean(x^2) + norm_eps) * q_norm, each k
  // head the same with k_norm, as ops::rms_norm computes each row. Both null
  // or both given: [head_dim] on q's device, F32|BF16 (CPU: F16 too, as
  // ops::rms_norm's weight). v is never normalized.
  const Tensor* q_norm = nullptr;
  const Tensor* k_norm = nullptr;
  float norm_eps = 0.0f;  // finite, >= 0; read only with the norms
};

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
// inv_freq:     [r] F32 with 2r <= head_dim, or [n_tokens, r] F32 (row t
//               for token t: per-sequence frequencies such as dynamic NTK
//               scaling gives), on q's device. A 2-D inv_freq gives bitwise
//               what the op on each token with its row as a 1-D one gives.
// slot_mapping: [n_tokens] I32 (on q's device)
// k_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
// v_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
// options:      RopeOptions (q/k norms); the default adds nothing
//
// CPU: bitwise equal to rope(q), rope(copy of k), write_kv_cache; with
// norms, to ops::rms_norm of each q head (q viewed as [n_tokens * n_heads,
// head_dim]) and of each k head first: F32 throughout, nothing rounded in
// between.
//
// CUDA: the same F32 math (cos/sin in double, rounded to F32, then the
// rotation without fused multiply-adds), each result rounded to BF16 once.
// With norms, the normalized value is rounded to BF16 before the rotation,
// as ops::rms_norm's BF16 output is (so twice in all):
//   rotated dims:   bf16(rotate(bf16((x * inv) * w)))
//   dims past 2r:   bf16((x * inv) * w)
//   inv = F32(1 / sqrt(F64(ss) / head_dim + F64(eps))), products in F32,
//   ss = the head's F32 sum of squares, summed in the order ops::rms_norm
//        sums a row of head_dim values: its 8-value packs when head_dim % 8
//        == 0 and q and k (fused: qkv and q) and both weights start 16-byte
//        aligned, as allocations do; single values otherwise.
// That is bitwise ops::rms_norm on q and k viewed as [rows, head_dim] BF16
// tensors, then ops::rope, then ops::write_kv_cache.
void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const RopeOptions& options = {});

// The same, reading q, k and v straight out of a fused QKV projection's
// output (ops::linear over the stacked wq, wk, wv rows), with no split
// copies: qkv is only read; the rotated q heads go to q.
//
// qkv:     [n_tokens, n_heads + 2 n_kv_heads, head_dim]: each token's q heads,
//          then its k heads, then its v heads; dtype F32 (CPU) | BF16 (CUDA)
// q:       [n_tokens, n_heads, head_dim], dtype of qkv (output)
// k_cache, v_cache: [num_blocks, block_size, n_kv_heads, head_dim], dtype of qkv
// positions, inv_freq, attention_factor, slot_mapping, options: as above.
//
// Equal (bitwise) to splitting qkv into q, k, v and calling
// rope_write_kv_cache on them with the same options.
void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const RopeOptions& options = {});

}  // namespace kite::ops
