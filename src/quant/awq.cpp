#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/rtn.h"

namespace kite::quant {

namespace {

constexpr const char* kSource = "awq";

// 4-lane float vectors (GCC/Clang vector extensions: SSE on x86-64, NEON on
// arm64) for the dot products of the searches.
typedef float v4f __attribute__((vector_size(16)));
inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float hsum(v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// a . b in float.
float dot8(const float* a, const float* b, int64_t n) {
  v4f s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += load4(a + i) * load4(b + i);
    s1 += load4(a + i + 4) * load4(b + i + 4);
  }
  float s = hsum(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// x . d[0..3] at once (x loaded once for four rows).
void dot8x4(const float* x, const float* const d[4], int64_t n, float out[4]) {
  v4f a0 = {}, b0 = {}, a1 = {}, b1 = {}, a2 = {}, b2 = {}, a3 = {}, b3 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v4f xl = load4(x + i), xh = load4(x + i + 4);
    a0 += xl * load4(d[0] + i);
    b0 += xh * load4(d[0] + i + 4);
    a1 += xl * load4(d[1] + i);
    b1 += xh * load4(d[1] + i + 4);
    a2 += xl * load4(d[2] + i);
    b2 += xh * load4(d[2] + i + 4);
    a3 += xl * load4(d[3] + i);
    b3 += xh * load4(d[3] + i + 4);
  }
  out[0] = hsum(a0 + b0);
  out[1] = hsum(a1 + b1);
  out[2] = hsum(a2 + b2);
  out[3] = hsum(a3 + b3);
  for (int r = 0; r < 4; ++r)
    for (int64_t j = i; j < n; ++j) out[r] += x[j] * d[r][j];
}

// ||x d^T||_F^2 for x: [m, in], d: [out, in].
double sq_norm_xdt(const std::vector<float>& x, int64_t m, const std::vector<float>& d, int64_t out, int64_t in) {
  const int64_t nb = (out + 3) / 4;
  std::vector<double> part(size_t(nb), 0.0);
  parallel_for(nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o0 = b * 4, rows = std::min<int64_t>(4, out - o0);
      const float* rp[4];
      for (int r = 0; r < 4; ++r) rp[r] = &d[size_t((o0 + std::min<int64_t>(r, rows - 1)) * in)];
      double s = 0;
      float y[4];
      for (int64_t t = 0; t < m; ++t) {
        dot8x4(&x[size_t(t * in)], rp, in, y);
        for (int r = 0; r < rows; ++r) s += double(y[r]) * y[r];
      }
      part[size_t(b)] = s;
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

struct Checked {
  std::vector<float> x;  // [n, in]
  int64_t n = 0, in = 0, group = 0;
};

Checked check_x(const Tensor& x, const AwqOptions& opt) {
  Checked c;
  c.x = checked_floats(x, kSource, "x", /*flatten=*/true);
  c.in = x.dim(-1);
  c.n = c.in ? int64_t(c.x.size()) / c.in : 0;
  if (c.n < 1) fail(kSource, "x", "{} holds no tokens; AWQ needs calibration activations", x.shape_str());
  if (c.in % 2) fail(kSource, "x", "in = {} is odd; 4-bit layouts pack two columns per byte", c.in);
  c.group = resolve_group(opt.group, c.in, kSource);
  if (opt.max_samples < 1) fail(kSource, "max_samples", "{}; use a positive token count such as 512", opt.max_samples);
  if (opt.grid < 1) fail(kSource, "grid", "{}; use a positive number of alphas such as 20", opt.grid);
  if (opt.clip_grid < 1) fail(kSource, "clip_grid", "{}; use a positive number of ratios such as 20", opt.clip_grid);
  if (!(opt.max_shrink >= 0.0 && opt.max_shrink < 1.0))
    fail(kSource, "max_shrink", "{} is outside [0, 1); use e.g. 0.5", opt.max_shrink);
  return c;
}

// At most max_samples rows of x, evenly spaced: [m, in].
std::vector<float> sample_rows(const Checked& c, int64_t max_samples, int64_t* m) {
  *m = std::min(c.n, max_samples);
  if (*m == c.n) return c.x;
  std::vector<float> s(size_t(*m * c.in));
  for (int64_t k = 0; k < *m; ++k) {
    const int64_t t = k * c.n / *m;
    std::copy_n(&c.x[size_t(t * c.in)], c.in, &s[size_t(k * c.in)]);
  }
  return s;
}

}  // namespace

Tensor awq_search_scales(const std::vector<const Tensor*>& ws, const Tensor& x, const AwqOptions& opt,
                         AwqStats* stats) {
  const Checked c = check_x(x, opt);
  const int64_t in = c.in, group = c.group;
  if (ws.empty()) fail(kSource, "weights", "no linears given; pass the weights that read x");
  std::vector<std::vector<float>> wf;
  std::vector<int64_t> outs;
  for (const Tensor* w : ws) {
    if (!w) fail(kSource, "weights", "a null weight pointer");
    wf.push_back(checked_floats(*w, kSource, "weight"));
    if (w->dim(1) != in)
      fail(kSource, "weight", "{} does not read x with in = {}; the linears must share the input", w->shape_str(), in);
    outs.push_back(w->dim(0));
  }

  // Mean |x| per channel over all tokens.
  std::vector<double> mean(size_t(in), 0.0);
  for (int64_t t = 0; t < c.n; ++t)
    for (int64_t j = 0; j < in; ++j) mean[size_t(j)] += std::fabs(c.x[size_t(t * in + j)]);
  for (double& v : mean) v = std::max(v / double(c.n), 1e-4);

  int64_t m = 0;
  const std::vector<float> xs = sample_rows(c, opt.max_samples, &m);  // [m, in]

  std::vector<float> s(static_cast<size_t>(in)), best_s(size_t(in), 1.0f);
  std::vector<float> diff;
  double best = std::numeric_limits<double>::infinity(), best_alpha = 0, base = 0;
  for (int k = 0; k < opt.grid; ++k) {
    const double alpha = double(k) / opt.grid;
    double smax = 0, smin = std::numeric_limits<double>::infinity();
    std::vector<double> sd(static_cast<size_t>(in));
    for (int64_t j = 0; j < in; ++j) {
      sd[size_t(j)] = std::pow(mean[size_t(j)], alpha);
      smax = std::max(smax, sd[size_t(j)]);
      smin = std::min(smin, sd[size_t(j)]);
    }
    const double norm = std::sqrt(smax * smin);
    for (int64_t j = 0; j < in; ++j) s[size_t(j)] = float(sd[size_t(j)] / norm);

    double loss = 0;
    for (size_t i = 0; i < wf.size(); ++i) {
      const int64_t out = outs[i];
      const std::vector<float>& w = wf[i];
      diff.resize(size_t(out * in));
      // diff = W - Q(W * s) / s, row by row.  [out, in]
      parallel_for(out, std::max<int64_t>(1, 16384 / in), [&](int64_t r0, int64_t r1) {
        std::vector<float> scaled(static_cast<size_t>(group));
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t g0 = 0; g0 < in; g0 += group) {
            const float* wr = &w[size_t(r * in + g0)];
            for (int64_t j = 0; j < group; ++j) scaled[size_t(j)] = wr[j] * s[size_t(g0 + j)];
            const IntGrid grid = int_grid(scaled.data(), group, 4, false);
            for (int64_t j = 0; j < group; ++j)
              diff[size_t(r * in + g0 + j)] = wr[j] - grid.fake(scaled[size_t(j)]) / s[size_t(g0 + j)];
          }
      });
      loss += sq_norm_xdt(xs, m, diff, out, in);
    }
    if (k == 0) base = loss;
    if (loss < best) {
      best = loss;
      best_alpha = alpha;
      best_s = s;
    }
  }
  if (stats) {
    stats->alpha = best_alpha;
    stats->loss = best;
    stats->base_loss = base;
  }
  return Tensor::from_floats({in}, best_s);  // [in]
}

void awq_clip(Tensor& w, const Tensor& x, const AwqOptions& opt) {
  const Checked c = check_x(x, opt);
  const int64_t in = c.in, G = c.group, ng = in / G;
  if (!w.defined() || w.ndim() != 2 || w.dtype() != DType::F32 || !w.is_contiguous() || !w.device().is_cpu())
    fail(kSource, "weight", "awq_clip modifies the weight in place: expected a contiguous CPU F32 [out, in], got {}",
         w.defined() ? w.shape_str() : "nothing");
  if (w.dim(1) != in) fail(kSource, "weight", "{} does not match x's in = {}", w.shape_str(), in);
  const int64_t out = w.dim(0);
  float* wp = w.data_as<float>();
  for (int64_t k = 0; k < out * in; ++k)
    if (!std::isfinite(wp[k])) fail(kSource, "weight", "element ({}, {}) is {}", k / in, k % in, wp[k]);

  int64_t m = 0;
  const std::vector<float> xs = sample_rows(c, opt.max_samples, &m);  // [m, in]
  // Per group Gram matrices of the sampled activations: [ng, G, G].
  std::vector<float> gram(static_cast<size_t>(ng * G * G));
  parallel_for(in, std::max<int64_t>(1, 8), [&](int64_t a0, int64_t a1) {
    std::vector<double> acc(static_cast<size_t>(G));
    for (int64_t a = a0; a < a1; ++a) {
      const int64_t g = a / G, ia = a % G, base = g * G;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < m; ++t) {
        const float* xt = &xs[size_t(t * in + base)];
        const double xa = xt[ia];
        if (xa == 0.0) continue;
        for (int64_t b = ia; b < G; ++b) acc[size_t(b)] += xa * xt[b];
      }
      float* gg = &gram[size_t(g * G * G)];
      for (int64_t b = ia; b < G; ++b) gg[ia * G + b] = gg[b * G + ia] = float(acc[size_t(b)]);
    }
  });

  parallel_for(out, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> clamped(static_cast<size_t>(G)), d(static_cast<size_t>(G));
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        float* seg = wp + r * in + g * G;
        const float* gg = &gram[size_t(g * G * G)];
        float lo = seg[0], hi = seg[0];
        for (int64_t j = 1; j < G; ++j) {
          lo = std::min(lo, seg[j]);
          hi = std::max(hi, seg[j]);
        }
        double best = std::numeric_limits<double>::infinity();
        float best_r = 1.0f;
        for (int k = 0; k <= opt.clip_grid; ++k) {
          const float ratio = float(1.0 - opt.max_shrink * k / opt.clip_grid);
          const float a = ratio * lo, b = ratio * hi;
          for (int64_t j = 0; j < G; ++j) clamped[size_t(j)] = std::min(std::max(seg[j], a), b);
          const IntGrid grid = int_grid(clamped.data(), G, 4, false);
          for (int64_t j = 0; j < G; ++j) d[size_t(j)] = seg[j] - grid.fake(clamped[size_t(j)]);
          double err = 0;  // d^T Gram d: the group's squared output error over the tokens
          for (int64_t j = 0; j < G; ++j)
            if (d[size_t(j)] != 0.0f) err += double(d[size_t(j)]) * dot8(gg + j * G, d.data(), G);
          if (err < best) {
            best = err;
            best_r = ratio;
          }
        }
        if (best_r < 1.0f) {
          const float a = best_r * lo, b = best_r * hi;
          for (int64_t j = 0; j < G; ++j) seg[j] = std::min(std::max(seg[j], a), b);
        }
      }
  });
}

QuantWeight awq_quantize(const Tensor& w_scaled, const Tensor& x_scaled, const AwqOptions& opt) {
  std::vector<float> wf = checked_floats(w_scaled, kSource, "weight");
  const int64_t out = w_scaled.dim(0), in = w_scaled.dim(1);
  if (in % 2) fail(kSource, "weight", "in = {} is odd; 4-bit layouts pack two columns per byte", in);
  const int64_t group = resolve_group(opt.group, in, kSource);
  Tensor w = Tensor::from_floats({out, in}, wf);  // [out, in], clipped in place
  if (opt.clip) {
    if (!x_scaled.defined())
      fail(kSource, "x", "clipping needs the (scaled) activations; pass x / s, or set clip = false");
    awq_clip(w, x_scaled, opt);
  }
  return quantize_rtn(w, QuantSpec::int4(group, /*symmetric=*/false));
}

}  // namespace kite::quant
