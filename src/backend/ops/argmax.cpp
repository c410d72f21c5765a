#include "backend/ops/argmax.h"

#include "backend/ops/check.h"

namespace kite::ops {

void argmax(const Tensor& x, Tensor& out) {
  const detail::OpCheck c("argmax");
  c.tensor("x", x, 2, "[m, n]", {DType::F32});
  if (x.dim(1) < 1) c.fail_arg("x", "rows must have at least one value");
  c.tensor("out", out, 1, "[m]", {DType::I32});
  c.dim("out", out, 0, x.dim(0), "m of x");
  c.same_device("out", out, "x", x);
  if (x.dim(0) == 0) return;
  c.kernel(x.device(), &Kernels::argmax)(x, out);
}

}  // namespace kite::ops
