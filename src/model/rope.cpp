#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace kite {

bool rope_is_dynamic(const ModelConfig& config) { return config.rope_scaling.type == "dynamic"; }

RopeFrequencies rope_frequencies(const ModelConfig& c, int64_t seq_len) {
  const int64_t rot_dim = int64_t(double(c.head_dim) * c.partial_rotary_factor) / 2 * 2;
  const int64_t half = rot_dim / 2;
  const RopeScaling& rs = c.rope_scaling;
  double base = c.rope_theta;
  if (rs.type == "dynamic") {
    int64_t orig =
        rs.original_max_position_embeddings ? rs.original_max_position_embeddings : c.max_position_embeddings;
    if (seq_len > orig) {
      double f = rs.factor;
      base = base * std::pow(f * double(seq_len) / double(orig) - (f - 1.0), double(rot_dim) / double(rot_dim - 2));
    }
  }
  // HF computes inv_freq in float32: 1 / base ** (arange(0, dim, 2).float() / dim).
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float expo = float(2 * i) / float(rot_dim);
    inv[size_t(i)] = 1.0 / double(std::pow(float(base), expo));
  }
  RopeFrequencies out;
  if (rs.type == "linear") {
    for (auto& f : inv) f /= rs.factor;
  } else if (rs.type == "llama3") {
    const double factor = rs.factor, low = rs.low_freq_factor, high = rs.high_freq_factor;
    const double orig = double(rs.original_max_position_embeddings);
    const double low_wavelen = orig / low, high_wavelen = orig / high;
    for (auto& f : inv) {
      double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = f / factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (orig / wavelen - low) / (high - low);
        f = (1.0 - smooth) * f / factor + smooth * f;
      }
    }
  } else if (rs.type == "yarn") {
    const double factor = rs.factor;
    const double orig =
        double(rs.original_max_position_embeddings ? rs.original_max_position_embeddings : c.max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return double(rot_dim) * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
    };
    double lo = std::floor(correction_dim(rs.beta_fast));
    double hi = std::ceil(correction_dim(rs.beta_slow));
    lo = std::max(lo, 0.0);
    hi = std::min(hi, double(rot_dim - 1));
    if (lo == hi) hi += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      double ramp = std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
      double extrapolation_factor = 1.0 - ramp;
      double f = inv[size_t(i)];
      inv[size_t(i)] = (f / factor) * (1.0 - extrapolation_factor) + f * extrapolation_factor;
    }
    out.attention_factor =
        rs.attention_factor > 0 ? float(rs.attention_factor) : float(factor <= 1 ? 1.0 : 0.1 * std::log(factor) + 1.0);
  } else if (rs.type != "default" && rs.type != "dynamic") {
    fail("config.json", "rope_scaling.rope_type", "'{}' is not supported (default, linear, dynamic, llama3, yarn)",
         rs.type);
  }
  out.inv_freq.assign(inv.begin(), inv.end());
  return out;
}

}  // namespace kite
