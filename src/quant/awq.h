#pragma once
// AWQ (Lin et al., arXiv 2306.00978): activation-aware 4-bit weight
// quantization. Input channels that carry large activations matter most, so
// the weights of those channels are scaled up before quantization (their
// relative rounding error shrinks) and the activations scaled down by the
// same factors: x W^T = (x / s) (W * s)^T exactly, and only W * s is rounded.
// Each group's range is then clipped where that lowers its output error.
//
// The pipeline for the linears W_i that share an input x (q/k/v after one
// norm, gate/up after another):
//   s   = awq_search_scales({&W_1, ...}, x, opt)        // [in]
//   W_i' = W_i * s (per input column), x' = x / s       (smoothquant.h: mul_columns, div_columns)
//   Q_i = awq_quantize(W_i', x', opt)                   // 4-bit asymmetric, group opt.group
// and 1 / s is folded into whatever produces x (the norm's weight, the
// previous linear's rows) or kept as QuantWeight::smooth.
#include <cstdint>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::quant {

struct AwqOptions {
  int64_t group = 128;        // 4-bit asymmetric group along in (-1: per channel)
  int grid = 20;              // alphas tried: 0, 1/grid, ..., (grid - 1) / grid
  bool clip = true;           // awq_quantize clips (awq_clip) before rounding
  int clip_grid = 20;         // shrink ratios tried: 1 - max_shrink * k / clip_grid, k = 0..clip_grid
  double max_shrink = 0.5;    // the smallest ratio is 1 - max_shrink
  int64_t max_samples = 512;  // tokens (rows of x, evenly spaced) used by the searches
};

struct AwqStats {
  double alpha = 0;      // the chosen exponent
  double loss = 0;       // sum_i ||x W_i^T - (x / s) Q(W_i * s)^T||^2 on the sampled tokens, at alpha
  double base_loss = 0;  // the same at alpha = 0 (s = 1: plain RTN)
};

// Per-input-channel scales s: [in] F32 for the linears ws (each [out_i, in],
// any float dtype) that read x: [n, in] (or [..., in]). With m_j = mean_t |x_tj|
// (all tokens), each alpha gives s_j = max(m_j, 1e-4)^alpha / sqrt(max_j s_j * min_j s_j)
// and the alpha with the least loss (see AwqStats, Q = 4-bit asymmetric RTN of
// group opt.group) wins; ties keep the smaller alpha.
Tensor awq_search_scales(const std::vector<const Tensor*>& ws, const Tensor& x, const AwqOptions& options,
                         AwqStats* stats = nullptr);

// Clips w: [out, in] F32 (contiguous, CPU; modified in place) per output row
// and group to [r * min, r * max] of its own values, with the ratio r among
// 1 - max_shrink * k / clip_grid (k = 0..clip_grid, r = 1 first) that gives
// the least output error sum_t (sum_{j in group} x_tj (w_j - Q(w)_j))^2 on x:
// [n, in] (the activations as w sees them, x / s after scaling). No group's
// error ever grows: r = 1 (no clip) is a candidate and wins ties.
void awq_clip(Tensor& w, const Tensor& x, const AwqOptions& options);

// awq_clip (when options.clip; x may be undefined otherwise) of a copy of
// w_scaled: [out, in], then 4-bit asymmetric RTN with group options.group
// (QuantScheme::Int4, symmetric = false).
QuantWeight awq_quantize(const Tensor& w_scaled, const Tensor& x_scaled, const AwqOptions& options);

}  // namespace kite::quant
