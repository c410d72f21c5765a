#include "backend/ops/embedding.h"

#include "backend/ops/check.h"
#include "backend/ops/trusted.h"

namespace kite::ops {

namespace {
void check_shapes(const detail::OpCheck& c, const Tensor& table, const Tensor& ids, const Tensor& out) {
  const bool cuda = !table.device().is_cpu();
  if (cuda)
    c.tensor("table", table, 2, "[vocab, d]", {DType::F32, DType::BF16});
  else
    c.tensor("table", table, 2, "[vocab, d]", {DType::F32, DType::BF16, DType::F16});
  c.tensor("ids", ids, 1, "[n]", {DType::I32});
  c.same_device("ids", ids, "table", table);
  if (cuda)
    c.tensor("out", out, 2, "[n, d]", {DType::F32, DType::BF16});
  else
    c.tensor("out", out, 2, "[n, d]", {DType::F32});
  c.dim("out", out, 0, ids.dim(0), "n of ids");
  c.dim("out", out, 1, table.dim(1), "d of table");
  c.same_device("out", out, "table", table);
}
}  // namespace

void embedding_shard(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out) {
  const detail::OpCheck c("embedding_shard");
  check_shapes(c, table, ids, out);
  if (first_id < 0) c.fail_arg("first_id", fmt::format("{} is negative", first_id));
  if (ids.dim(0) == 0) return;
  c.kernel(table.device(), &Kernels::embedding_shard)(table, ids, first_id, out);
}

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const detail::OpCheck c("embedding");
  check_shapes(c, table, ids, out);
  // Every id is checked before any row is read (a small copy when ids live
  // on a device, skipped for trusted indices: ops/trusted.h).
  if (!ids.device().is_cpu() && indices_trusted()) {
    c.kernel(table.device(), &Kernels::embedding)(table, ids, out);
    return;
  }
  const Tensor host_ids = ids.device().is_cpu() ? ids : ids.to(kCpu);
  const int32_t* p = host_ids.data_as<const int32_t>();
  const int64_t vocab = table.dim(0);
  for (int64_t i = 0; i < host_ids.dim(0); ++i)
    if (p[i] < 0 || p[i] >= vocab)
      c.fail_arg("ids", fmt::format("expected ids in [0, {}), got {} at index {}", vocab, p[i], i));
  c.kernel(table.device(), &Kernels::embedding)(table, ids, out);
}

}  // namespace kite::ops
