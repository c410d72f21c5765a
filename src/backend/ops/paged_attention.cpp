#include "backend/ops/paged_attention.h"

#include <algorithm>
#include <cmath>

#include "backend/ops/check.h"
#include "backend/ops/trusted.h"

namespace kite::ops {

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale, Tensor& out) {
  paged_attention(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, PagedAttentionHints{}, 0, out);
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const PagedAttentionHints& hints, Tensor& out) {
  paged_attention(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, hints, 0, out);
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const PagedAttentionHints& hints, int64_t sliding_window, Tensor& out) {
  const detail::OpCheck c("paged_attention");
  const char* cache_layout = "[num_blocks, block_size, n_kv_heads, head_dim]";
  // The CPU computes in F32; the CUDA kernels read and write BF16.
  const bool on_cpu = q.defined() && q.device().is_cpu();
  const DType dt = on_cpu ? DType::F32 : DType::BF16;
  c.tensor("q", q, 3, "[n_tokens, n_heads, head_dim]", {dt});
  c.tensor("k_cache", k_cache, 4, cache_layout, {dt});
  c.tensor("v_cache", v_cache, 4, cache_layout, {dt});
  c.same_device("k_cache", k_cache, "q", q);
  c.same_device("v_cache", v_cache, "q", q);
  c.dim("k_cache", k_cache, 3, q.dim(2), "head_dim of q");
  const int64_t n_tokens = q.dim(0), n_heads = q.dim(1), head_dim = q.dim(2);
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(1), n_kv_heads = k_cache.dim(2);
  if (!on_cpu && head_dim != 64 && head_dim != 128)
    c.fail_arg("q", fmt::format("expected head_dim (dim 2) 64 or 128 on cuda, got shape {}; other head sizes run "
                                "on the cpu only",
                                q.shape_str()));
  if (block_size <= 0)
    c.fail_arg("k_cache", fmt::format("expected block_size (dim 1) >= 1, got shape {}", k_cache.shape_str()));
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    c.fail_arg("k_cache", fmt::format("expected n_kv_heads (dim 2) dividing n_heads = {}, got shape {}", n_heads,
                                      k_cache.shape_str()));
  for (int i = 0; i < 4; ++i) c.dim("v_cache", v_cache, i, k_cache.dim(i), "shape of k_cache");

  c.tensor("query_start", query_start, 1, "[n_seqs + 1]", {DType::I32});
  c.same_device("query_start", query_start, "q", q);
  if (query_start.dim(0) < 1)
    c.fail_arg("query_start", fmt::format("expected n_seqs + 1 >= 1 entries, got shape {}", query_start.shape_str()));
  const int64_t n_seqs = query_start.dim(0) - 1;
  c.tensor("context_lens", context_lens, 1, "[n_seqs]", {DType::I32});
  c.same_device("context_lens", context_lens, "q", q);
  c.dim("context_lens", context_lens, 0, n_seqs, "n_seqs of query_start");
  c.tensor("block_tables", block_tables, 2, "[n_seqs, max_blocks_per_seq]", {DType::I32});
  c.same_device("block_tables", block_tables, "q", q);
  c.dim("block_tables", block_tables, 0, n_seqs, "n_seqs of query_start");
  if (!std::isfinite(scale)) c.fail_arg("scale", fmt::format("expected a finite scale, got {}", scale));
  if (hints.kv_splits < 0)
    c.fail_arg("hints", fmt::format("expected kv_splits >= 0 (0: chosen by the backend), got {}", hints.kv_splits));
  if (sliding_window < 0)
    c.fail_arg("sliding_window",
               fmt::format("expected a sliding window >= 0 (0: no window, W: keys (p - W, p] visible), got {}",
                           sliding_window));

  c.tensor("out", out, 3, "[n_tokens, n_heads, head_dim]", {dt});
  for (int i = 0; i < 3; ++i) c.dim("out", out, i, q.dim(i), "shape of q");
  c.same_device("out", out, "q", q);
  c.no_overlap("out", out, "q", q, false);
  c.no_overlap("out", out, "k_cache", k_cache, false);
  c.no_overlap("out", out, "v_cache", v_cache, false);
  c.no_overlap("out", out, "query_start", query_start, false);
  c.no_overlap("out", out, "context_lens", context_lens, false);
  c.no_overlap("out", out, "block_tables", block_tables, false);

  PagedAttentionHints resolved = hints;
  // On a device with both hints given and trusted indices (ops/trusted.h),
  // nothing is copied to the host; otherwise every index is checked before
  // any row is read.
  if (on_cpu || hints.max_query_len < 0 || hints.max_context_len < 0 || !indices_trusted()) {
    const Tensor host_qs = query_start.device().is_cpu() ? query_start : query_start.to(kCpu);
    const Tensor host_cl = context_lens.device().is_cpu() ? context_lens : context_lens.to(kCpu);
    const Tensor host_bt = block_tables.device().is_cpu() ? block_tables : block_tables.to(kCpu);
    const int32_t* qs = host_qs.data_as<const int32_t>();
    const int32_t* cl = host_cl.data_as<const int32_t>();
    const int32_t* bt = host_bt.data_as<const int32_t>();
    if (qs[0] != 0) c.fail_arg("query_start", fmt::format("expected query_start[0] = 0, got {}", qs[0]));
    for (int64_t s = 0; s < n_seqs; ++s)
      if (qs[s + 1] < qs[s])
        c.fail_arg("query_start", fmt::format("expected non-decreasing entries, got query_start[{}] = {} after {}",
                                              s + 1, qs[s + 1], qs[s]));
    if (qs[n_seqs] != n_tokens)
      c.fail_arg("query_start", fmt::format("expected query_start[{}] = n_tokens = {} (dim 0 of q), got {}", n_seqs,
                                            n_tokens, qs[n_seqs]));
    const int64_t max_blocks = block_tables.dim(1);
    int64_t max_q = 0, max_len = 0;
    for (int64_t s = 0; s < n_seqs; ++s) {
      const int64_t n_q = int64_t(qs[s + 1]) - qs[s], len = cl[s];
      if (len < n_q)
        c.fail_arg("context_lens", fmt::format("expected context_lens[{}] >= its query count {}, got {}", s, n_q, len));
      max_q = std::max(max_q, n_q);
      max_len = std::max(max_len, len);
      const int64_t need = (len + block_size - 1) / block_size;
      if (need > max_blocks)
        c.fail_arg("block_tables",
                   fmt::format("expected at least {} blocks per sequence (context_lens[{}] = {}, block_size {}), got "
                               "shape {}",
                               need, s, len, block_size, block_tables.shape_str()));
      for (int64_t b = 0; b < need; ++b) {
        const int32_t id = bt[s * max_blocks + b];
        if (id < 0 || id >= num_blocks)
          c.fail_arg("block_tables",
                     fmt::format("expected block ids in [0, {}) for the {} blocks of sequence {}, got {} at [{}, {}]",
                                 num_blocks, need, s, id, s, b));
      }
    }
    if (resolved.max_query_len < 0) resolved.max_query_len = max_q;
    if (resolved.max_context_len < 0) resolved.max_context_len = max_len;
  }
  c.kernel(q.device(), &Kernels::paged_attention)(q, k_cache, v_cache, query_start, context_lens, block_tables, scale,
                                                  resolved, sliding_window, out);
}

}  // namespace kite::ops
