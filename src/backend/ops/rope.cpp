#include "backend/ops/rope.h"

#include <cmath>

#include "backend/ops/check.h"

namespace kite::ops {

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor) {
  const detail::OpCheck c("rope");
  if (!x.device().is_cpu())
    c.tensor("x", x, 3, "[n, n_heads, head_dim]", {DType::BF16, DType::F32});
  else
    c.tensor("x", x, 3, "[n, n_heads, head_dim]", {DType::F32});
  c.tensor("positions", positions, 1, "[n]", {DType::I32});
  c.dim("positions", positions, 0, x.dim(0), "n of x");
  c.same_device("positions", positions, "x", x);
  c.inv_freq(inv_freq, x.dim(0), "n of x", x.dim(2), "x", x);
  if (!std::isfinite(attention_factor))
    c.fail_arg("attention_factor", fmt::format("expected a finite factor, got {}", attention_factor));
  c.kernel(x.device(), &Kernels::rope)(x, positions, inv_freq, attention_factor);
}

}  // namespace kite::ops
