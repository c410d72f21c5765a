// The CPU's quantized linear kernel (every scheme of core/quant_weight.h,
// every activation quantization) over cpu::linear_q. Its pack step works
// out once what a call would otherwise redo: the activations' gather order
// (act-order permutation and the 4-bit block reorder) and the bias in F32.
#include <cmath>
#include <memory>

#include "backend/cpu/cpu_ops.h"
#include "backend/linear.h"
#include "core/error.h"

namespace kite::cpu {

namespace {

struct QuantPacked : PackedWeight {
  QuantWeight w;  // its tensors on the CPU, contiguous
  LinearQPlan plan;
  std::vector<float> bias;  // [out] F32, or empty
};

Tensor host(const Tensor& t) {
  if (!t.defined()) return t;
  return t.device().is_cpu() ? t.contiguous() : t.to(kCpu);
}

class CpuQuantLinear final : public LinearKernel {
 public:
  std::string_view name() const override { return "cpu_quant"; }
  bool can_run(const LinearSpec& s) const override {
    return s.device.is_cpu() && s.scheme != QuantScheme::Dense && s.act_dtype == DType::F32 &&
           (s.act != ActQuant::Int8Token || s.scheme == QuantScheme::Int8);
  }
  std::unique_ptr<PackedWeight> pack(const QuantWeight& w, const Tensor& bias, const LinearSpec&) const override {
    auto p = std::make_unique<QuantPacked>();
    p->w = w;
    for (Tensor* t : {&p->w.qdata, &p->w.scales, &p->w.zeros, &p->w.perm, &p->w.smooth}) *t = host(*t);
    if (w.act == ActQuant::Fp8Static && !(w.input_scale > 0.0f && std::isfinite(w.input_scale)))
      fail("cpu_quant linear", "input_scale", "expected a finite scale > 0 for static fp8 activations, got {}",
           w.input_scale);
    p->plan = plan_linear_q(p->w);
    if (bias.defined()) p->bias = host(bias).to_floats();
    p->bytes = p->w.storage_bytes() + p->bias.size() * sizeof(float) + p->plan.src.size() * sizeof(int32_t);
    return p;
  }
  void run(const PackedWeight& pw, const Tensor& x, Tensor& y) const override {
    const auto& p = static_cast<const QuantPacked&>(pw);
    if (!x.device().is_cpu() || x.dtype() != DType::F32 || !x.is_contiguous() || !y.device().is_cpu() ||
        y.dtype() != DType::F32 || !y.is_contiguous())
      fail("cpu_quant linear", "x", "expected contiguous F32 x and y on the CPU, got {} x and {} y",
           dtype_name(x.dtype()), dtype_name(y.dtype()));
    linear_q(x, p.w, p.plan, p.bias.empty() ? nullptr : p.bias.data(), y, simd_level());
  }
};

}  // namespace

std::unique_ptr<LinearKernel> make_quant_linear_kernel() { return std::make_unique<CpuQuantLinear>(); }

}  // namespace kite::cpu
