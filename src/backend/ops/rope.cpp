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
  c.tensor("inv_freq", inv_freq, 1, "[r]", {DType::F32});
  c.same_device("inv_freq", inv_freq, "x", x);
  if (2 * inv_freq.dim(0) > x.dim(2))
    c.fail_arg("inv_freq", fmt::format("expected at most head_dim / 2 = {} frequencies, got shape {}", x.dim(2) / 2,
                                       inv_freq.shape_str()));
  if (!std::isfinite(attention_factor))
    c.fail_arg("attention_factor", fmt::format("expected a finite factor, got {}", attention_factor));
  c.kernel(x.device(), &Kernels::rope)(x, positions, inv_freq, attention_factor);
}

}  // namespace kite::ops
