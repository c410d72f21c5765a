#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace kite::ops {

// What the caller knows on the host about a paged_attention batch. -1 means
// unknown: the dispatcher then copies query_start and context_lens to the
// host once (it does anyway to check the indices) and works them out.
struct PagedAttentionHints {
  int64_t max_query_len = -1;    // max over sequences of query_start[s + 1] - query_start[s]
  int64_t max_context_len = -1;  // max over sequences of context_lens[s]
  // Split-KV partitions per query row on CUDA: 0 lets the backend choose (it
  // splits long contexts when the batch alone would leave SMs idle); n >= 1
  // forces n (tests and benchmarks). The CPU ignores it.
  int64_t kv_splits = 0;
};

// Causal grouped-query attention for a batch of sequences whose K/V live in
// a paged cache (vLLM's layout; block_size token slots per block).
//
// The queries of all sequences are concatenated: sequence s owns query rows
// [query_start[s], query_start[s + 1]); they are its newest tokens, so with
// n_q = query_start[s + 1] - query_start[s] and L = context_lens[s], query
// row i (0-based within s) sits at position L - n_q + i and attends to key
// positions [0, L - n_q + i]. Key position p of sequence s lives in slot
// p % block_size of block block_tables[s][p / block_size]. Query head h
// reads KV head h / (n_heads / n_kv_heads). Softmax in F32 with the max
// subtracted. Entries of block_tables past a sequence's last block are
// ignored (pad them with -1).
//
// q:            [n_tokens, n_heads, head_dim] F32 (CPU) | BF16 (CUDA)
// k_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
// v_cache:      [num_blocks, block_size, n_kv_heads, head_dim], dtype of q
// query_start:  [n_seqs + 1] I32, query_start[0] = 0, non-decreasing, last = n_tokens (on q's device)
// context_lens: [n_seqs] I32, context_lens[s] >= its query count (on q's device)
// block_tables: [n_seqs, max_blocks_per_seq] I32 (on q's device)
// out:          [n_tokens, n_heads, head_dim], dtype of q
//
// CPU: with the same keys in the same order, the result equals
// ops::attention on the sequence's contiguous K/V (bitwise at any SIMD
// level). CUDA (BF16, head_dim 64 or 128, any block_size; 16 is the tuned
// one): F32 scores, softmax and accumulation; the probabilities enter the
// P·V product rounded to BF16, the output is rounded to BF16.
//
// Malformed indices (query_start out of order, a context shorter than its
// queries, a block table too narrow for a context, a block id within a
// context outside [0, num_blocks)) raise kite::Error before anything is read.
// Exception: on a device, when both max_query_len and max_context_len are
// given and a TrustedIndices guard lives (ops/trusted.h), the indices are not
// copied to the host (that copy would synchronize every call); the kernels
// then still never read or write outside the tensors, but malformed indices
// give unspecified output instead of an error.
// Hints that are too small or too large only cost speed, never correctness.
//
// Sliding window (Mistral, Qwen2 with use_sliding_window; HF transformers'
// convention): with sliding_window = W >= 1, the query at position p attends
// only to key positions (p - W, p], i.e. [max(0, p - W + 1), p]: key k is
// visible iff p - W < k <= p. W = 1 sees its own key only; W at least the
// context length sees everything, as W = 0 (no window) does. Keys outside
// the window are not read (a long context with a small window costs about W
// keys per query), though block_tables must still be valid for the whole
// context. A negative window raises kite::Error.
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const PagedAttentionHints& hints, int64_t sliding_window, Tensor& out);
// sliding_window = 0 (every earlier key visible).
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale, Tensor& out);
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const PagedAttentionHints& hints, Tensor& out);

}  // namespace kite::ops
