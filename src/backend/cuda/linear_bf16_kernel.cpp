// CUDA's dense linear kernel: BF16 activations and BF16 weights through
// cuBLASLt (backend/cuda/linear.cpp), F32 accumulation; y BF16, or F32 for
// logits. Its pack step converts the weight to BF16 on the host when the
// checkpoint stores F32 or F16, then copies it (and the bias) to the device.
#include <memory>

#include "backend/backend.h"
#include "backend/linear.h"
#include "backend/ops/linear.h"

namespace kite::cuda {

namespace {

struct Bf16Packed : PackedWeight {
  Tensor w;     // [out, in] BF16 on the device
  Tensor bias;  // [out] BF16 on the device, or undefined
};

Tensor device_bf16(const Tensor& t, Device device) {
  // Already in place (a tied lm_head packed from the device embedding): shared, not copied.
  if (t.device() == device && t.dtype() == DType::BF16 && t.is_contiguous()) return t;
  Tensor h = t.device().is_cpu() ? t.contiguous() : t.to(kCpu);
  if (h.dtype() != DType::BF16) h = h.to_dtype(DType::BF16);
  return h.to(device);
}

class CudaBf16Linear final : public LinearKernel {
 public:
  std::string_view name() const override { return "cuda_bf16_cublaslt"; }
  bool can_run(const LinearSpec& s) const override {
    return s.device.kind == DeviceKind::CUDA && s.scheme == QuantScheme::Dense && s.act_dtype == DType::BF16 &&
           (s.weight_dtype == DType::F32 || s.weight_dtype == DType::BF16 || s.weight_dtype == DType::F16);
  }
  std::unique_ptr<PackedWeight> pack(const QuantWeight& w, const Tensor& bias, const LinearSpec& s) const override {
    auto p = std::make_unique<Bf16Packed>();
    p->w = device_bf16(w.dense, s.device);
    if (bias.defined()) p->bias = device_bf16(bias, s.device);
    p->bytes = p->w.nbytes() + (p->bias.defined() ? p->bias.nbytes() : 0);
    return p;
  }
  void run(const PackedWeight& pw, const Tensor& x, Tensor& y) const override {
    const auto& p = static_cast<const Bf16Packed&>(pw);
    ops::linear(x, p.w, p.bias.defined() ? &p.bias : nullptr, y);
  }
};

}  // namespace

std::unique_ptr<LinearKernel> make_bf16_linear_kernel() { return std::make_unique<CudaBf16Linear>(); }

}  // namespace kite::cuda
