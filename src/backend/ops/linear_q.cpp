#include "backend/ops/linear_q.h"

#include <cmath>

#include "backend/ops/check.h"
#include "backend/ops/linear.h"

namespace kite::ops {

void linear_q(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y) {
  const detail::OpCheck c("linear_q");
  c.tensor("x", x, 2, "[n, in]", {DType::F32});
  w.validate("op linear_q");
  c.dim("x", x, 1, w.in, "in of the weight");
  if (!w.quantized()) {
    if (w.act != ActQuant::None || w.smooth.defined())
      c.fail_arg("act", "expected no activation quantization or smoothing with a dense weight");
    linear(x, w.dense, bias, y);
    return;
  }
  // validate() checked shapes and dtypes; the kernels also need contiguous
  // tensors on x's device.
  const std::pair<const char*, const Tensor*> parts[] = {
      {"qdata", &w.qdata}, {"scales", &w.scales}, {"zeros", &w.zeros}, {"perm", &w.perm}, {"smooth", &w.smooth}};
  for (const auto& [name, t] : parts) {
    if (!t->defined()) continue;
    if (!t->is_contiguous())
      c.fail_arg(name, "expected a contiguous tensor, got strides " + shape_to_string(t->strides()));
    c.same_device(name, *t, "x", x);
  }
  if (w.smooth.defined()) {
    c.tensor("smooth", w.smooth, 1, "[in]", {DType::F32});
    c.dim("smooth", w.smooth, 0, w.in, "in of the weight");
  }
  switch (w.act) {
    case ActQuant::None:
    case ActQuant::Fp8Token: break;
    case ActQuant::Int8Token:
      if (w.scheme != QuantScheme::Int8)
        c.fail_arg("act",
                   fmt::format("expected int8 weights for int8 activations, got {}", quant_scheme_name(w.scheme)));
      // |sum of a group's products| <= group * 127 * 128 must fit int32.
      if (w.group > (int64_t(1) << 17))
        c.fail_arg("group_size", fmt::format("expected at most {} for int8 activations, got {}", 1 << 17, w.group));
      break;
    case ActQuant::Fp8Static:
      if (!(w.input_scale > 0.0f) || !std::isfinite(w.input_scale))
        c.fail_arg("input_scale",
                   fmt::format("expected a finite scale > 0 for static fp8 activations, got {}", w.input_scale));
      break;
  }
  if (bias) {
    c.tensor("bias", *bias, 1, "[out]", {DType::F32, DType::BF16, DType::F16});
    c.dim("bias", *bias, 0, w.out, "out of the weight");
    c.same_device("bias", *bias, "x", x);
  }
  c.tensor("y", y, 2, "[n, out]", {DType::F32});
  c.dim("y", y, 0, x.dim(0), "n of x");
  c.dim("y", y, 1, w.out, "out of the weight");
  c.same_device("y", y, "x", x);
  c.no_overlap("y", y, "x", x, false);
  c.kernel(x.device(), &Kernels::linear_q)(x, w, bias, y);
}

}  // namespace kite::ops
