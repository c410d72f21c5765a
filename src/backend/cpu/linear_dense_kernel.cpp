// The CPU's dense linear kernel: F32 activations against F32, BF16 or F16
// weights used where they lie (a mapped checkpoint's tensors are not copied).
#include <memory>

#include "backend/cpu/cpu_ops.h"
#include "backend/linear.h"
#include "backend/ops/linear.h"

namespace kite::cpu {

namespace {

struct DensePacked : PackedWeight {
  Tensor w;     // [out, in]
  Tensor bias;  // [out] or undefined
};

class CpuDenseLinear final : public LinearKernel {
 public:
  std::string_view name() const override { return "cpu_dense"; }
  bool can_run(const LinearSpec& s) const override {
    return s.device.is_cpu() && s.scheme == QuantScheme::Dense && s.act_dtype == DType::F32 &&
           (s.weight_dtype == DType::F32 || s.weight_dtype == DType::BF16 || s.weight_dtype == DType::F16);
  }
  std::unique_ptr<PackedWeight> pack(const QuantWeight& w, const Tensor& bias, const LinearSpec&) const override {
    auto p = std::make_unique<DensePacked>();
    p->w = w.dense.device().is_cpu() ? w.dense.contiguous() : w.dense.to(kCpu);
    if (bias.defined()) p->bias = bias.device().is_cpu() ? bias.contiguous() : bias.to(kCpu);
    p->bytes = p->w.nbytes() + (p->bias.defined() ? p->bias.nbytes() : 0);
    return p;
  }
  void run(const PackedWeight& pw, const Tensor& x, Tensor& y) const override {
    const auto& p = static_cast<const DensePacked&>(pw);
    ops::linear(x, p.w, p.bias.defined() ? &p.bias : nullptr, y);
  }
};

}  // namespace

std::unique_ptr<LinearKernel> make_dense_linear_kernel() { return std::make_unique<CpuDenseLinear>(); }

}  // namespace kite::cpu
