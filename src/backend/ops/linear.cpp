#include "backend/ops/linear.h"

#include "backend/ops/check.h"

namespace kite::ops {

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const detail::OpCheck c("linear");
  // The device of x picks the dtype rules (see linear.h).
  const bool cuda = !x.device().is_cpu();
  if (cuda) {
    c.tensor("x", x, 2, "[n, k]", {DType::BF16});
    c.tensor("w", w, 2, "[m, k]", {DType::BF16});
  } else {
    c.tensor("x", x, 2, "[n, k]", {DType::F32});
    c.tensor("w", w, 2, "[m, k]", {DType::F32, DType::BF16, DType::F16});
  }
  c.dim("w", w, 1, x.dim(1), "k of x");
  c.same_device("w", w, "x", x);
  if (cuda)
    c.tensor("y", y, 2, "[n, m]", {DType::BF16, DType::F32});
  else
    c.tensor("y", y, 2, "[n, m]", {DType::F32});
  c.dim("y", y, 0, x.dim(0), "n of x");
  c.dim("y", y, 1, w.dim(0), "m of w");
  c.same_device("y", y, "x", x);
  if (bias) {
    if (!cuda)
      c.tensor("bias", *bias, 1, "[m]", {DType::F32, DType::BF16, DType::F16});
    else if (y.dtype() == DType::F32)
      c.tensor("bias", *bias, 1, "[m]", {DType::BF16, DType::F32});
    else
      c.tensor("bias", *bias, 1, "[m] (BF16 for a BF16 y)", {DType::BF16});
    c.dim("bias", *bias, 0, w.dim(0), "m of w");
    c.same_device("bias", *bias, "x", x);
  }
  c.no_overlap("y", y, "x", x, false);
  c.no_overlap("y", y, "w", w, false);
  if (bias) c.no_overlap("y", y, "bias", *bias, false);
  c.kernel(x.device(), &Kernels::linear)(x, w, bias, y);
}

}  // namespace kite::ops
