#include "backend/ops/rms_norm.h"

#include <cmath>

#include "backend/ops/check.h"

namespace kite::ops {

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const detail::OpCheck c("rms_norm");
  if (!x.device().is_cpu()) {
    c.tensor("x", x, 2, "[n, d]", {DType::BF16, DType::F32});
    c.tensor("weight", weight, 1, "[d]", {DType::F32, DType::BF16});
  } else {
    c.tensor("x", x, 2, "[n, d]", {DType::F32});
    c.tensor("weight", weight, 1, "[d]", {DType::F32, DType::BF16, DType::F16});
  }
  c.dim("weight", weight, 0, x.dim(1), "d of x");
  c.same_device("weight", weight, "x", x);
  c.tensor("out", out, 2, "[n, d] (the dtype of x)", {x.dtype()});
  c.dim("out", out, 0, x.dim(0), "n of x");
  c.dim("out", out, 1, x.dim(1), "d of x");
  c.same_device("out", out, "x", x);
  c.no_overlap("out", out, "x", x, true);
  if (!(eps >= 0.0f) || !std::isfinite(eps)) c.fail_arg("eps", fmt::format("expected a finite eps >= 0, got {}", eps));
  c.kernel(x.device(), &Kernels::rms_norm)(x, weight, eps, out);
}

}  // namespace kite::ops
