#include "backend/ops/linear.h"

#include "backend/ops/check.h"

namespace kite::ops {

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const detail::OpCheck c("linear");
  c.tensor("x", x, 2, "[n, k]", {DType::F32});
  c.tensor("w", w, 2, "[m, k]", {DType::F32, DType::BF16, DType::F16});
  c.dim("w", w, 1, x.dim(1), "k of x");
  c.same_device("w", w, "x", x);
  if (bias) {
    c.tensor("bias", *bias, 1, "[m]", {DType::F32, DType::BF16, DType::F16});
    c.dim("bias", *bias, 0, w.dim(0), "m of w");
    c.same_device("bias", *bias, "x", x);
  }
  c.tensor("y", y, 2, "[n, m]", {DType::F32});
  c.dim("y", y, 0, x.dim(0), "n of x");
  c.dim("y", y, 1, w.dim(0), "m of w");
  c.same_device("y", y, "x", x);
  c.no_overlap("y", y, "x", x, false);
  c.kernel(x.device(), &Kernels::linear)(x, w, bias, y);
}

}  // namespace kite::ops
