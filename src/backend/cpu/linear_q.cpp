// y = act(x) @ W^T (+ bias) on the CPU, straight from the packed layouts of
// core/quant_weight.h. Here: the activations are prepared once per call
// (smoothing, per-row fp8/int8 rounding, act-order gather, 4-bit block
// reorder; see linear_q_kernels.h), then the output columns (weight rows)
// are split across threads and each range goes to the kernel of the SIMD
// level (linear_q_{scalar,avx2,avx512}.cpp). Every weight byte is read by
// one thread: decode (n <= 4) dequantizes it in registers once for all rows;
// prefill decodes tiles of weight rows to F32 and reuses them for every row.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/linear_q_kernels.h"
#include "backend/cpu/vec.h"
#include "core/error.h"
#include "core/parallel.h"

namespace kite::cpu {

float int8_token_finish(const LinearQArgs& a, int64_t i, int64_t j, const int32_t* dots) {
  const int64_t groups = a.groups;
  const float* s = a.scales + j * groups;
  float acc = 0.0f;
  for (int64_t g = 0; g < groups; ++g) acc += float(dots[g]) * s[g];
  return acc * a.xscale[i] + (a.bias ? a.bias[j] : 0.0f);
}

namespace {

// Where packed column j sits in x' (linear_q_kernels.h): 4-bit schemes
// reorder each full 32-column block of a group; other schemes keep j.
int64_t prepared_pos(int64_t j, int64_t group, bool nibbles) {
  if (!nibbles) return j;
  const int64_t g0 = j / group * group, r = j - g0, full = group / kNibbleBlock * kNibbleBlock;
  if (r >= full) return j;
  const int64_t b0 = r / kNibbleBlock * kNibbleBlock, t = r - b0;
  return g0 + b0 + ((t & 1) ? kNibbleBlock / 2 + t / 2 : t / 2);
}

struct Prepared {
  std::vector<float> x;       // [n, in] x' (empty when x itself serves)
  std::vector<int8_t> xq;     // [n, in] Int8Token codes
  std::vector<float> xscale;  // [n]
  std::vector<float> xsum;    // [n, in / group]
};

// x' and friends for the whole call; rows in parallel (each row's values
// depend only on that row, so thread count never changes results).
void prepare(const Tensor& x, const QuantWeight& w, const std::vector<int32_t>& src, Prepared& p) {
  const int64_t n = x.dim(0), in = w.in;
  const float* xd = x.data_as<const float>();
  const float* smooth = w.smooth.defined() ? w.smooth.data_as<const float>() : nullptr;
  const bool int8 = w.act == ActQuant::Int8Token;
  if (int8)
    p.xq.resize(size_t(n * in));
  else
    p.x.resize(size_t(n * in));
  if (w.act != ActQuant::None) p.xscale.resize(size_t(n));
  const int64_t grain = std::max<int64_t>(1, 16384 / in);
  parallel_for(n, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> t(static_cast<size_t>(in));  // [in] x / smooth in logical order
    for (int64_t i = i0; i < i1; ++i) {
      const float* xr = xd + i * in;
      float amax = 0.0f;
      for (int64_t c = 0; c < in; ++c) {
        t[size_t(c)] = smooth ? xr[c] / smooth[c] : xr[c];
        amax = std::max(amax, std::fabs(t[size_t(c)]));
      }
      if (int8) {
        const float s = amax / 127.0f;
        p.xscale[size_t(i)] = s;
        int8_t* o = p.xq.data() + i * in;
        for (int64_t c = 0; c < in; ++c) {
          const float v = s > 0.0f ? std::nearbyint(t[size_t(src[size_t(c)])] / s) : 0.0f;
          o[c] = v == v ? int8_t(std::clamp(v, -127.0f, 127.0f)) : int8_t(0);  // NaN (from inf or NaN x) -> 0
        }
        continue;
      }
      float* o = p.x.data() + i * in;
      if (w.act == ActQuant::None) {
        for (int64_t c = 0; c < in; ++c) o[c] = t[size_t(src[size_t(c)])];
        continue;
      }
      const float s = w.act == ActQuant::Fp8Static ? w.input_scale : amax / 448.0f;
      p.xscale[size_t(i)] = s;
      for (int64_t c = 0; c < in; ++c) o[c] = s > 0.0f ? fp8_e4m3_round(t[size_t(src[size_t(c)])] / s) : 0.0f;
    }
  });
}

}  // namespace

LinearQPlan plan_linear_q(const QuantWeight& w) {
  LinearQPlan plan;
  const int64_t in = w.in;
  const bool nibbles = w.scheme == QuantScheme::Int4 || w.scheme == QuantScheme::Nf4;
  const int64_t group = w.scheme == QuantScheme::Fp8 ? in : w.group;
  // src[p]: the logical column of x feeding position p of x'.
  const int32_t* perm = nullptr;
  Tensor perm_host;
  if (w.perm.defined() && (w.scheme == QuantScheme::Int8 || w.scheme == QuantScheme::Int4)) {
    perm_host = w.perm.device().is_cpu() ? w.perm : w.perm.to(kCpu);
    perm = perm_host.data_as<const int32_t>();
    for (int64_t j = 0; j < in; ++j)
      if (perm[j] < 0 || perm[j] >= in)
        fail("op linear_q", "perm", "expected values in [0, {}), got {} at {}", in, perm[j], j);
  }
  plan.src.resize(size_t(in));
  bool identity = true;
  for (int64_t j = 0; j < in; ++j) {
    const int64_t p = prepared_pos(j, group, nibbles);
    plan.src[size_t(p)] = perm ? perm[j] : int32_t(j);
    identity = identity && plan.src[size_t(p)] == p;
  }
  plan.as_is = identity && !w.smooth.defined() && w.act == ActQuant::None;
  return plan;
}

void linear_q(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y, SimdLevel level) {
  std::vector<float> b;  // [out] bias in F32
  if (bias) {
    b.resize(size_t(w.out));
    vec_ops(clamp_simd_level(level)).to_f32(bias->data(), bias->dtype(), b.data(), w.out);
  }
  linear_q(x, w, plan_linear_q(w), bias ? b.data() : nullptr, y, level);
}

void linear_q(const Tensor& x, const QuantWeight& w, const LinearQPlan& plan, const float* bias, Tensor& y,
              SimdLevel level) {
  level = clamp_simd_level(level);
  const int64_t n = x.dim(0), in = w.in, out = w.out;
  if (n == 0) return;
  const int64_t group = w.scheme == QuantScheme::Fp8 ? in : w.group;
  const std::vector<int32_t>& src = plan.src;
  const bool as_is = plan.as_is;

  Prepared prep;
  if (!as_is) prepare(x, w, src, prep);

  LinearQArgs a{};
  a.scheme = w.scheme;
  a.n = n;
  a.in = in;
  a.out = out;
  a.group = group;
  a.groups = in / group;
  a.x = as_is ? x.data_as<const float>() : prep.x.empty() ? nullptr : prep.x.data();
  a.xq = prep.xq.empty() ? nullptr : prep.xq.data();
  a.xscale = prep.xscale.empty() ? nullptr : prep.xscale.data();
  a.q = static_cast<const uint8_t*>(w.qdata.data());
  a.scales = w.scales.data_as<const float>();
  a.zeros = w.scheme == QuantScheme::Int4 ? w.zeros.data_as<const float>() : nullptr;
  a.per_channel = w.scheme == QuantScheme::Fp8 && w.scales.dim(0) == out && out > 1;
  a.y = y.data_as<float>();

  if (w.scheme == QuantScheme::Int4 && level == SimdLevel::Avx2) {  // it folds zeros in as z * sum(x') per group
    const int64_t groups = a.groups;
    prep.xsum.resize(size_t(n * groups));
    parallel_for(n, std::max<int64_t>(1, 16384 / in), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t g = 0; g < groups; ++g) {
          float s = 0.0f;
          for (int64_t c = g * group; c < (g + 1) * group; ++c) s += a.x[i * in + c];
          prep.xsum[size_t(i * groups + g)] = s;
        }
    });
    a.xsum = prep.xsum.data();
  }
  a.bias = bias;

  void (*cols)(const LinearQArgs&, int64_t, int64_t) = level == SimdLevel::Avx512 ? linear_q_cols_avx512
                                                       : level == SimdLevel::Avx2 ? linear_q_cols_avx2
                                                                                  : linear_q_cols_scalar;
  // Units of 8 weight rows; enough multiply-adds per chunk that tiny layers
  // stay on one thread.
  constexpr int64_t kUnit = 8;
  const int64_t units = (out + kUnit - 1) / kUnit;
  const int64_t macs_per_unit = kUnit * in * n;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, macs_per_unit));
  parallel_for(units, grain, [&](int64_t u0, int64_t u1) { cols(a, u0 * kUnit, std::min(u1 * kUnit, out)); });
}

}  // namespace kite::cpu
