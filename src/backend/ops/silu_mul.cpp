#include "backend/ops/silu_mul.h"

#include "backend/ops/check.h"

namespace kite::ops {

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const detail::OpCheck c("silu_mul");
  if (!gate.device().is_cpu())
    c.tensor("gate", gate, gate.ndim(), "(any shape)", {DType::BF16, DType::F32});
  else
    c.tensor("gate", gate, gate.ndim(), "(any shape)", {DType::F32});
  c.tensor("up", up, gate.ndim(), "(the shape and dtype of gate)", {gate.dtype()});
  for (int i = 0; i < gate.ndim(); ++i) c.dim("up", up, i, gate.dim(i), "shape of gate");
  c.same_device("up", up, "gate", gate);
  c.tensor("out", out, gate.ndim(), "(the shape and dtype of gate)", {gate.dtype()});
  for (int i = 0; i < gate.ndim(); ++i) c.dim("out", out, i, gate.dim(i), "shape of gate");
  c.same_device("out", out, "gate", gate);
  c.no_overlap("out", out, "gate", gate, true);
  c.no_overlap("out", out, "up", up, true);
  c.kernel(gate.device(), &Kernels::silu_mul)(gate, up, out);
}

void silu_mul_fused(const Tensor& gate_up, Tensor& out) {
  const detail::OpCheck c("silu_mul_fused");
  if (!gate_up.device().is_cpu())
    c.tensor("gate_up", gate_up, 2, "[n, 2f]", {DType::BF16, DType::F32});
  else
    c.tensor("gate_up", gate_up, 2, "[n, 2f]", {DType::F32});
  if (gate_up.dim(1) % 2 != 0)
    c.fail_arg("gate_up", fmt::format("expected an even number of columns [n, 2f], got shape {}", gate_up.shape_str()));
  c.tensor("out", out, 2, "[n, f]", {gate_up.dtype()});
  c.dim("out", out, 0, gate_up.dim(0), "n of gate_up");
  c.dim("out", out, 1, gate_up.dim(1) / 2, "half the columns of gate_up");
  c.same_device("out", out, "gate_up", gate_up);
  c.no_overlap("out", out, "gate_up", gate_up, false);
  c.kernel(gate_up.device(), &Kernels::silu_mul_fused)(gate_up, out);
}

}  // namespace kite::ops
