#include "backend/ops/add.h"

#include "backend/ops/check.h"

namespace kite::ops {

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const detail::OpCheck c("add");
  if (!a.device().is_cpu())
    c.tensor("a", a, a.ndim(), "(any shape)", {DType::BF16, DType::F32});
  else
    c.tensor("a", a, a.ndim(), "(any shape)", {DType::F32});
  c.tensor("b", b, a.ndim(), "(the shape and dtype of a)", {a.dtype()});
  for (int i = 0; i < a.ndim(); ++i) c.dim("b", b, i, a.dim(i), "shape of a");
  c.same_device("b", b, "a", a);
  c.tensor("out", out, a.ndim(), "(the shape and dtype of a)", {a.dtype()});
  for (int i = 0; i < a.ndim(); ++i) c.dim("out", out, i, a.dim(i), "shape of a");
  c.same_device("out", out, "a", a);
  c.no_overlap("out", out, "a", a, true);
  c.no_overlap("out", out, "b", b, true);
  c.kernel(a.device(), &Kernels::add)(a, b, out);
}

}  // namespace kite::ops
