#include "backend/ops/paged_attention.h"

#include <cmath>

#include "backend/ops/check.h"

namespace kite::ops {

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale, Tensor& out) {
  const detail::OpCheck c("paged_attention");
  const char* cache_layout = "[num_blocks, block_size, n_kv_heads, head_dim]";
  c.tensor("q", q, 3, "[n_tokens, n_heads, head_dim]", {DType::F32});
  c.tensor("k_cache", k_cache, 4, cache_layout, {DType::F32});
  c.tensor("v_cache", v_cache, 4, cache_layout, {DType::F32});
  c.same_device("k_cache", k_cache, "q", q);
  c.same_device("v_cache", v_cache, "q", q);
  c.dim("k_cache", k_cache, 3, q.dim(2), "head_dim of q");
  const int64_t n_tokens = q.dim(0), n_heads = q.dim(1);
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(1), n_kv_heads = k_cache.dim(2);
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

  c.tensor("out", out, 3, "[n_tokens, n_heads, head_dim]", {DType::F32});
  for (int i = 0; i < 3; ++i) c.dim("out", out, i, q.dim(i), "shape of q");
  c.same_device("out", out, "q", q);
  c.no_overlap("out", out, "q", q, false);
  c.no_overlap("out", out, "k_cache", k_cache, false);
  c.no_overlap("out", out, "v_cache", v_cache, false);
  c.no_overlap("out", out, "query_start", query_start, false);
  c.no_overlap("out", out, "context_lens", context_lens, false);
  c.no_overlap("out", out, "block_tables", block_tables, false);

  // Every index is checked before any row is read (small copies when the
  // indices live on a device).
  const Tensor host_qs = query_start.device().is_cpu() ? query_start : query_start.to(kCpu);
  const Tensor host_cl = context_lens.device().is_cpu() ? context_lens : context_lens.to(kCpu);
  const Tensor host_bt = block_tables.device().is_cpu() ? block_tables : block_tables.to(kCpu);
  const int32_t* qs = host_qs.data_as<const int32_t>();
  const int32_t* cl = host_cl.data_as<const int32_t>();
  const int32_t* bt = host_bt.data_as<const int32_t>();
  if (qs[0] != 0) c.fail_arg("query_start", fmt::format("expected query_start[0] = 0, got {}", qs[0]));
  for (int64_t s = 0; s < n_seqs; ++s)
    if (qs[s + 1] < qs[s])
      c.fail_arg("query_start", fmt::format("expected non-decreasing entries, got query_start[{}] = {} after {}", s + 1,
                                            qs[s + 1], qs[s]));
  if (qs[n_seqs] != n_tokens)
    c.fail_arg("query_start", fmt::format("expected query_start[{}] = n_tokens = {} (dim 0 of q), got {}", n_seqs,
                                          n_tokens, qs[n_seqs]));
  const int64_t max_blocks = block_tables.dim(1);
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t n_q = int64_t(qs[s + 1]) - qs[s], len = cl[s];
    if (len < n_q)
      c.fail_arg("context_lens", fmt::format("expected context_lens[{}] >= its query count {}, got {}", s, n_q, len));
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
  c.kernel(q.device(), &Kernels::paged_attention)(q, k_cache, v_cache, query_start, context_lens, block_tables, scale,
                                                  out);
}

}  // namespace kite::ops
