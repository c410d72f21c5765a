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

}  // namespace kite::ops
