#pragma once
// SmoothQuant (Xiao et al., arXiv 2211.10438): migrates the quantization
// difficulty of activation outlier channels into the weights, so both can be
// int8: x W^T = (x / s) (W * s)^T with, per input channel j,
//   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
// (max|W_j| over every linear reading x). After migration with alpha = 0.5
// channel j's activation and weight ranges are both sqrt(max|X_j| max|W_j|).
#include <cstdint>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::quant {

// Running per-channel max |x| over calibration batches.
class ActAbsMaxAccumulator {
 public:
  explicit ActAbsMaxAccumulator(int64_t in);
  void add(const Tensor& x);                    // x: [n, in] (or [..., in]), any float dtype, any device
  Tensor absmax() const;                        // [in] F32
  int64_t samples() const { return samples_; }  // tokens seen
  int64_t in() const { return in_; }

 private:
  int64_t in_;
  int64_t samples_ = 0;
  std::vector<float> absmax_;
};

// s: [in] F32 from act_absmax: [in] and the linears ws (each [out_i, in]) that
// read those activations, alpha in [0, 1]. The result is clamped to >= 1e-5;
// a channel whose activations or weights are all 0 gets s = 1 (nothing to
// migrate, and no blow-up of x / s should it be live at inference).
// Throws kite::Error("smoothquant", field, ...) on bad shapes or alpha.
Tensor smooth_factors(const Tensor& act_absmax, const std::vector<const Tensor*>& ws, double alpha);

// m[..., j] * s[j] and m[..., j] / s[j] (m any float dtype, s [in]) as F32 of m's shape.
Tensor mul_columns(const Tensor& m, const Tensor& s);
Tensor div_columns(const Tensor& m, const Tensor& s);

// W8A8 with smoothing: int8 per-output-channel RTN of w * s, activations
// quantized per token at run time (ActQuant::Int8Token), smooth = s.
QuantWeight smoothquant_quantize(const Tensor& w, const Tensor& s);

}  // namespace kite::quant
