#include "backend/ops/attention.h"

#include <cmath>

#include "backend/ops/check.h"

namespace kite::ops {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale, Tensor& out) {
  const detail::OpCheck c("attention");
  c.tensor("q", q, 3, "[n_q, n_heads, head_dim]", {DType::F32});
  c.tensor("k", k, 3, "[n_kv, n_kv_heads, head_dim]", {DType::F32});
  c.tensor("v", v, 3, "[n_kv, n_kv_heads, head_dim]", {DType::F32});
  c.same_device("k", k, "q", q);
  c.same_device("v", v, "q", q);
  c.dim("k", k, 2, q.dim(2), "head_dim of q");
  c.dim("v", v, 0, k.dim(0), "n_kv of k");
  c.dim("v", v, 1, k.dim(1), "n_kv_heads of k");
  c.dim("v", v, 2, q.dim(2), "head_dim of q");
  const int64_t n_heads = q.dim(1), n_kv_heads = k.dim(1);
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    c.fail_arg("k", fmt::format("expected n_kv_heads dividing n_heads = {}, got shape {}", n_heads, k.shape_str()));
  if (q_start < 0) c.fail_arg("q_start", fmt::format("expected q_start >= 0, got {}", q_start));
  if (k.dim(0) < q_start + q.dim(0))
    c.fail_arg("k", fmt::format("expected at least q_start + n_q = {} + {} = {} KV rows, got shape {}", q_start,
                                q.dim(0), q_start + q.dim(0), k.shape_str()));
  if (!std::isfinite(scale)) c.fail_arg("scale", fmt::format("expected a finite scale, got {}", scale));
  c.tensor("out", out, 3, "[n_q, n_heads, head_dim]", {DType::F32});
  for (int i = 0; i < 3; ++i) c.dim("out", out, i, q.dim(i), "shape of q");
  c.same_device("out", out, "q", q);
  c.no_overlap("out", out, "q", q, false);
  c.no_overlap("out", out, "k", k, false);
  c.no_overlap("out", out, "v", v, false);
  c.kernel(q.device(), &Kernels::attention)(q, k, v, q_start, scale, out);
}

}  // namespace kite::ops
