#include "quant/rtn.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace kite::quant {

namespace {

constexpr const char* kSource = "quantize";

// Rows per parallel_for chunk so that a chunk holds at least ~16k elements.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

// The 15 decision boundaries between neighbouring NF4 levels.
const std::array<float, 15>& nf4_midpoints() {
  static const std::array<float, 15> mids = [] {
    std::array<float, 15> m{};
    for (int k = 0; k < 15; ++k) m[k] = float((double(kNf4Table[k]) + double(kNf4Table[k + 1])) / 2.0);
    return m;
  }();
  return mids;
}

// Magnitudes of the E4M3 codes 0..0x7e, ascending (0x7f is NaN).
const std::array<float, 127>& fp8_magnitudes() {
  static const std::array<float, 127> mags = [] {
    std::array<float, 127> m{};
    for (int c = 0; c < 127; ++c) m[c] = fp8_e4m3_to_f32(uint8_t(c));
    return m;
  }();
  return mags;
}

// Checks `spec` against a weight with `in` columns; returns the group.
int64_t check_spec(const QuantSpec& spec, int64_t in) {
  if (spec.bits != 4 && spec.bits != 8) fail(kSource, "bits", "{} bits is not supported; use 4 or 8", spec.bits);
  switch (spec.scheme) {
    case QuantScheme::Dense: fail(kSource, "scheme", "dense is not a quantized scheme; pick int8, int4, nf4 or fp8");
    case QuantScheme::Int8:
      if (spec.bits != 8)
        fail(kSource, "bits", "{} bits with the int8 scheme; set bits = 8 (QuantSpec::int8()) or use the int4 scheme",
             spec.bits);
      if (!spec.symmetric)
        fail(kSource, "symmetric",
             "int8 is symmetric only (its layout has no zero points); set symmetric = true, or use int4 asymmetric");
      return resolve_group(spec.group, in, kSource);
    case QuantScheme::Int4:
    case QuantScheme::Nf4:
      if (spec.scheme == QuantScheme::Int4 && spec.bits != 4)
        fail(kSource, "bits", "{} bits with the int4 scheme; set bits = 4 (QuantSpec::int4()) or use the int8 scheme",
             spec.bits);
      if (in % 2)
        fail(kSource, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte (pad in to an even size)", in);
      return resolve_group(spec.group, in, kSource);
    case QuantScheme::Fp8: return 0;
  }
  fail(kSource, "scheme", "unknown scheme {}", int(spec.scheme));
}

void quantize_int(const std::vector<float>& w, int64_t out, int64_t in, int64_t group, int bits, bool symmetric,
                  QuantWeight& q) {
  const int64_t ng = in / group;
  float* sc = q.scales.data_as<float>();
  float* zp = bits == 4 ? q.zeros.data_as<float>() : nullptr;
  parallel_for(out, row_grain(in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = w.data() + r * in;
      for (int64_t g = 0; g < ng; ++g) {
        const float* seg = row + g * group;
        const IntGrid grid = int_grid(seg, group, bits, symmetric);
        sc[r * ng + g] = grid.scale;
        if (bits == 8) {
          int8_t* codes = q.qdata.data_as<int8_t>() + r * in + g * group;
          for (int64_t i = 0; i < group; ++i) codes[i] = int8_t(grid.code(seg[i]));
        } else {
          zp[r * ng + g] = grid.zero;
          uint8_t* packed = q.qdata.data_as<uint8_t>() + r * (in / 2);
          for (int64_t i = 0; i < group; ++i) set_nibble(packed, g * group + i, uint8_t(grid.code(seg[i])));
        }
      }
    }
  });
}

void quantize_nf4(const std::vector<float>& w, int64_t out, int64_t in, int64_t block, QuantWeight& q) {
  float* absmax = q.scales.data_as<float>();  // [out * in / block]
  parallel_for(out, row_grain(in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* packed = q.qdata.data_as<uint8_t>() + r * (in / 2);
      for (int64_t b = 0; b < in / block; ++b) {
        const float* seg = w.data() + r * in + b * block;
        float m = 0.0f;
        for (int64_t i = 0; i < block; ++i) m = std::max(m, std::fabs(seg[i]));
        absmax[(r * in) / block + b] = m;
        const float inv = m > 0.0f ? 1.0f / m : 0.0f;  // bitsandbytes multiplies by the reciprocal
        for (int64_t i = 0; i < block; ++i) set_nibble(packed, b * block + i, nf4_code(seg[i] * inv));
      }
    }
  });
}

void quantize_fp8(const std::vector<float>& w, int64_t out, int64_t in, bool per_channel, QuantWeight& q) {
  std::vector<float> row_max(size_t(out), 0.0f);
  parallel_for(out, row_grain(in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float m = 0.0f;
      for (int64_t i = 0; i < in; ++i) m = std::max(m, std::fabs(w[r * in + i]));
      row_max[r] = m;
    }
  });
  auto scale_of = [](float absmax) {
    const float s = float(double(absmax) / 448.0);
    return s > 0.0f ? s : 1.0f;
  };
  float* sc = q.scales.data_as<float>();
  if (per_channel) {
    for (int64_t r = 0; r < out; ++r) sc[r] = scale_of(row_max[r]);
  } else {
    sc[0] = scale_of(*std::max_element(row_max.begin(), row_max.end()));
  }
  uint8_t* codes = q.qdata.data_as<uint8_t>();
  parallel_for(out, row_grain(in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float s = sc[per_channel ? r : 0];
      for (int64_t i = 0; i < in; ++i) codes[r * in + i] = fp8_e4m3_encode(w[r * in + i] / s);
    }
  });
}

}  // namespace

QuantSpec QuantSpec::int8(int64_t group) { return {QuantScheme::Int8, 8, group, true, true}; }
QuantSpec QuantSpec::int4(int64_t group, bool symmetric) { return {QuantScheme::Int4, 4, group, symmetric, true}; }
QuantSpec QuantSpec::nf4(int64_t block) { return {QuantScheme::Nf4, 4, block, true, true}; }
QuantSpec QuantSpec::fp8(bool per_channel) { return {QuantScheme::Fp8, 8, 0, true, per_channel}; }

float round_half_even(float x) {
  // Adding 1.5 * 2^23 leaves no fraction bits, so the FPU's round-to-nearest-
  // even does the rounding; vectorizes, unlike std::nearbyint on baseline x86-64.
  constexpr float kMagic = 12582912.0f;
  if (!(std::fabs(x) < 4194304.0f)) return x;
  return (x + kMagic) - kMagic;
}

int IntGrid::code(float w) const {
  float c = round_half_even(w / scale) + zero;
  c = std::min(std::max(c, float(qmin)), float(qmax));
  return int(c);
}

IntGrid int_grid(const float* w, int64_t n, int bits, bool symmetric) {
  KITE_CHECK(bits == 4 || (bits == 8 && symmetric), "int grid of {} bits (symmetric {})", bits, symmetric);
  float lo = 0.0f, hi = 0.0f;  // the range always holds 0
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  IntGrid g;
  if (bits == 8) {
    g.qmin = -127;
    g.qmax = 127;
    g.zero = 0.0f;
    g.scale = float(std::max(-double(lo), double(hi)) / 127.0);
  } else if (symmetric) {
    g.zero = 8.0f;
    g.scale = float(std::max(-double(lo), double(hi)) / 7.0);
  } else {
    g.scale = float((double(hi) - double(lo)) / 15.0);
    if (g.scale > 0.0f) g.zero = std::min(std::max(round_half_even(-lo / g.scale), 0.0f), 15.0f);
  }
  if (!(g.scale > 0.0f) || !std::isfinite(g.scale)) {  // all zeros (or denormal dust): codes at the zero point
    g.scale = 1.0f;
    g.zero = bits == 8 ? 0.0f : 8.0f;
  }
  return g;
}

uint8_t nf4_code(float x) {
  const auto& mids = nf4_midpoints();
  uint8_t c = 0;
  for (int k = 0; k < 15; ++k) c += x > mids[k];  // strict: a midpoint goes to the lower level
  return c;
}

uint8_t fp8_e4m3_encode(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  const auto& mags = fp8_magnitudes();
  // c: the largest code with mags[c] <= a (c <= 0x7d since a < 448).
  const int c = int(std::upper_bound(mags.begin(), mags.end(), a) - mags.begin()) - 1;
  const float lo = std::fabs(mags[c] - a), hi = std::fabs(mags[c + 1] - a);
  const bool up = hi < lo || (hi == lo && ((c + 1) & 1) == 0);  // ties to the even code
  return sign | uint8_t(up ? c + 1 : c);
}

std::vector<float> checked_floats(const Tensor& t, const char* source, const char* field, bool flatten) {
  if (!t.defined() || !dtype_is_float(t.dtype()) || (flatten ? t.ndim() < 2 : t.ndim() != 2))
    fail(source, field, "expected a float {} tensor, got {} {}", flatten ? "[..., cols]" : "[rows, cols]",
         t.defined() ? t.shape_str() : "nothing", t.defined() ? dtype_name(t.dtype()) : "");
  std::vector<float> f = t.to_floats();
  const int64_t cols = t.dim(-1);
  for (size_t i = 0; i < f.size(); ++i)
    if (!std::isfinite(f[i]))
      fail(source, field, "element ({}, {}) is {}; only finite values can be used", int64_t(i) / cols,
           int64_t(i) % cols, f[i]);
  return f;
}

int64_t resolve_group(int64_t group, int64_t in, const char* source) {
  if (group == -1) return in;
  if (group < 1 || in % group)
    fail(source, "group",
         "{} does not divide the input dimension {}; use a divisor of {} (128, 64, 32, ...) or -1 for per-channel",
         group, in, in);
  return group;
}

QuantWeight quantize_rtn(const Tensor& w, const QuantSpec& spec) {
  std::vector<float> wf = checked_floats(w, kSource, "weight");
  const int64_t out = w.dim(0), in = w.dim(1);
  if (out < 1 || in < 1) fail(kSource, "weight", "[{}, {}] is not a weight shape", out, in);
  const int64_t group = check_spec(spec, in);

  QuantWeight q;
  q.scheme = spec.scheme;
  q.out = out;
  q.in = in;
  q.group = group;
  switch (spec.scheme) {
    case QuantScheme::Int8:
      q.qdata = Tensor::empty({out, in}, DType::I8);            // [out, in]
      q.scales = Tensor::empty({out, in / group}, DType::F32);  // [out, in / group]
      quantize_int(wf, out, in, group, 8, true, q);
      break;
    case QuantScheme::Int4:
      q.qdata = Tensor::zeros({out, in / 2}, DType::U8);        // [out, in / 2]
      q.scales = Tensor::empty({out, in / group}, DType::F32);  // [out, in / group]
      q.zeros = Tensor::empty({out, in / group}, DType::F32);   // [out, in / group]
      quantize_int(wf, out, in, group, 4, spec.symmetric, q);
      break;
    case QuantScheme::Nf4:
      q.qdata = Tensor::zeros({out, in / 2}, DType::U8);         // [out, in / 2]
      q.scales = Tensor::empty({out * in / group}, DType::F32);  // [out * in / group]
      quantize_nf4(wf, out, in, group, q);
      break;
    case QuantScheme::Fp8:
      q.qdata = Tensor::empty({out, in}, DType::F8_E4M3);                  // [out, in]
      q.scales = Tensor::empty({spec.per_channel ? out : 1}, DType::F32);  // [out] or [1]
      quantize_fp8(wf, out, in, spec.per_channel, q);
      break;
    case QuantScheme::Dense: break;
  }
  return q;
}

QuantError quant_error(const Tensor& w, const QuantWeight& q) {
  if (!w.defined() || w.ndim() != 2 || w.dim(0) != q.out || w.dim(1) != q.in)
    fail("quant_error", "weight", "expected [{}, {}] (the quantized weight's shape), got {}", q.out, q.in,
         w.defined() ? w.shape_str() : "nothing");
  const std::vector<float> ref = w.to_floats();
  const Tensor dq = dequantize(q);  // [out, in]
  const float* d = dq.data_as<const float>();
  double max_abs = 0, sq = 0, ref_sq = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = double(ref[i]) - double(d[i]);
    max_abs = std::max(max_abs, std::fabs(e));
    sq += e * e;
    ref_sq += double(ref[i]) * double(ref[i]);
  }
  QuantError r;
  r.max_abs = max_abs;
  r.mean_sq = ref.empty() ? 0.0 : sq / double(ref.size());
  r.rel_fro = ref_sq > 0 ? std::sqrt(sq / ref_sq) : (sq > 0 ? INFINITY : 0.0);
  return r;
}

}  // namespace kite::quant
