#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/rtn.h"

namespace kite::quant {

namespace {

constexpr const char* kSource = "gptq";

double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Rows of a triangular loop in pairs (p, n - 1 - p), so that the chunks
// parallel_for hands out cost about the same.
void parallel_pairs(int64_t n, int64_t grain, const std::function<void(int64_t)>& fn) {
  parallel_for((n + 1) / 2, grain, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      fn(p);
      if (n - 1 - p != p) fn(n - 1 - p);
    }
  });
}

// In-place lower Cholesky of a: [n, n] (lower triangle read and written).
bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double* rj = &a[size_t(j * n)];
    const double diag = rj[j];
    const double d = diag - dot(rj, rj, j);
    if (!(d > 1e-12 * std::fabs(diag)) || !std::isfinite(d)) return false;
    rj[j] = std::sqrt(d);
    const double inv = 1.0 / rj[j];
    parallel_for(n - j - 1, std::max<int64_t>(1, 32768 / std::max<int64_t>(j, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = j + 1 + b; i < j + 1 + e; ++i) {
        double* ri = &a[size_t(i * n)];
        ri[j] = (ri[j] - dot(ri, rj, j)) * inv;
      }
    });
  }
  return true;
}

}  // namespace

// ---- HessianAccumulator ------------------------------------------------------

HessianAccumulator::HessianAccumulator(int64_t in) : in_(in) {
  if (in < 1) fail(kSource, "in", "{} is not an input dimension", in);
  sum_.assign(size_t(in * in), 0.0);
}

void HessianAccumulator::add(const Tensor& x) {
  std::vector<float> xf = checked_floats(x, kSource, "x", /*flatten=*/true);
  if (x.dim(-1) != in_)
    fail(kSource, "x", "{} has {} columns; the accumulator is for in = {}", x.shape_str(), x.dim(-1), in_);
  const int64_t n = int64_t(xf.size()) / in_;
  constexpr int64_t kChunk = 64;  // tokens per rank-k update
  std::vector<double> xd(static_cast<size_t>(kChunk * in_));
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    const int64_t tn = std::min(kChunk, n - t0);
    for (int64_t k = 0; k < tn * in_; ++k) xd[size_t(k)] = double(xf[size_t(t0 * in_ + k)]);
    // sum[i][j] += x[t][i] * x[t][j] for j >= i: row i is an axpy over its upper part.
    parallel_pairs(in_, std::max<int64_t>(1, 4096 / in_), [&](int64_t i) {
      double* row = &sum_[size_t(i * in_)];
      for (int64_t t = 0; t < tn; ++t) {
        const double* xt = &xd[size_t(t * in_)];
        const double xi = xt[i];
        if (xi == 0.0) continue;
        for (int64_t j = i; j < in_; ++j) row[j] += xi * xt[j];
      }
    });
  }
  samples_ += n;
}

std::vector<double> HessianAccumulator::hessian_f64() const {
  std::vector<double> h(size_t(in_ * in_), 0.0);
  if (samples_ == 0) return h;
  const double f = 2.0 / double(samples_);
  for (int64_t i = 0; i < in_; ++i)
    for (int64_t j = i; j < in_; ++j) h[size_t(i * in_ + j)] = h[size_t(j * in_ + i)] = f * sum_[size_t(i * in_ + j)];
  return h;
}

Tensor HessianAccumulator::hessian() const {
  const std::vector<double> h = hessian_f64();
  Tensor t = Tensor::empty({in_, in_}, DType::F32);  // [in, in]
  float* p = t.data_as<float>();
  for (size_t k = 0; k < h.size(); ++k) p[k] = float(h[k]);
  return t;
}

// ---- inverse Hessian ------------------------------------------------------------

std::vector<double> inverse_cholesky_upper(std::vector<double> h, int64_t n) {
  KITE_CHECK(int64_t(h.size()) == n * n, "{} values for a [{}, {}] matrix", h.size(), n, n);
  // With J the order reversal, A = J H J = L L^T gives H^-1 = U^T U for the
  // upper triangular U = J L^-1 J. J H J of a row-major matrix is its
  // element array reversed; H's upper triangle becomes A's lower one.
  std::reverse(h.begin(), h.end());
  if (!cholesky_lower(h, n)) return {};
  // Columns of X = L^-1 by forward substitution, column c stored as row c of
  // xt (entries c..n-1): x[c] = 1 / L[c][c], x[i] = -L[i][c..i) . x[c..i) / L[i][i].
  std::vector<double> xt(size_t(n * n), 0.0);
  parallel_pairs(n, std::max<int64_t>(1, 64 / std::max<int64_t>(1, n / 64)), [&](int64_t c) {
    double* x = &xt[size_t(c * n)];
    x[c] = 1.0 / h[size_t(c * n + c)];
    for (int64_t i = c + 1; i < n; ++i) {
      const double* li = &h[size_t(i * n)];
      x[i] = -dot(li + c, x + c, i - c) / li[i];
    }
  });
  // U[a][b] = X[n-1-a][n-1-b] = xt[n-1-b][n-1-a] for b >= a.
  std::vector<double> u(size_t(n * n), 0.0);
  parallel_for(n, std::max<int64_t>(1, 4096 / n), [&](int64_t b0, int64_t b1) {
    for (int64_t a = b0; a < b1; ++a)
      for (int64_t b = a; b < n; ++b) u[size_t(a * n + b)] = xt[size_t((n - 1 - b) * n + (n - 1 - a))];
  });
  return u;
}

// ---- GPTQ -----------------------------------------------------------------------

namespace {

QuantWeight gptq_impl(const Tensor& w, std::vector<double> h, const GptqOptions& opt, GptqStats* stats) {
  std::vector<float> wf = checked_floats(w, kSource, "weight");
  const int64_t out = w.dim(0), in = w.dim(1);
  if (out < 1 || in < 1) fail(kSource, "weight", "[{}, {}] is not a weight shape", out, in);
  if (opt.bits != 4 && opt.bits != 8) fail(kSource, "bits", "{} bits is not supported; use 4 or 8", opt.bits);
  if (opt.bits == 8 && !opt.symmetric)
    fail(kSource, "symmetric", "8-bit GPTQ is symmetric only (the int8 layout has no zero points); set symmetric");
  if (opt.bits == 4 && in % 2)
    fail(kSource, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte (pad in to an even size)", in);
  const int64_t group = resolve_group(opt.group, in, kSource);
  if (opt.block < 1) fail(kSource, "block", "{} columns per block; use a positive size such as 128", opt.block);
  if (!(opt.damp >= 0.0) || !std::isfinite(opt.damp))
    fail(kSource, "damp", "{} is not a dampening fraction; use a small positive value such as 0.01", opt.damp);
  if (int64_t(h.size()) != in * in) fail(kSource, "hessian", "expected [{}, {}] (in x in of the weight)", in, in);
  for (double v : h)
    if (!std::isfinite(v)) fail(kSource, "hessian", "has non-finite values; check the calibration activations");

  // Dead inputs: make them an isolated unit pivot.
  int64_t dead = 0;
  for (int64_t i = 0; i < in; ++i)
    if (h[size_t(i * in + i)] == 0.0) {
      ++dead;
      for (int64_t j = 0; j < in; ++j) h[size_t(i * in + j)] = h[size_t(j * in + i)] = 0.0;
      h[size_t(i * in + i)] = 1.0;
    }

  // Processing order: position p handles input column order[p].
  std::vector<int32_t> order(static_cast<size_t>(in));
  std::iota(order.begin(), order.end(), 0);
  if (opt.act_order)
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return h[size_t(a) * in + a] > h[size_t(b) * in + b]; });
  std::vector<double> hp(static_cast<size_t>(in * in));  // [in, in], H in processing order
  parallel_for(in, std::max<int64_t>(1, 4096 / in), [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a)
      for (int64_t b = 0; b < in; ++b) hp[size_t(a * in + b)] = h[size_t(order[a]) * in + order[b]];
  });
  h.clear();
  h.shrink_to_fit();

  double mean_diag = 0;
  for (int64_t i = 0; i < in; ++i) mean_diag += hp[size_t(i * in + i)];
  mean_diag /= double(in);
  double damp = opt.damp;
  std::vector<double> ud;
  for (int attempt = 0;; ++attempt) {
    std::vector<double> damped = hp;
    for (int64_t i = 0; i < in; ++i) damped[size_t(i * in + i)] += damp * mean_diag;
    ud = inverse_cholesky_upper(std::move(damped), in);
    if (!ud.empty()) break;
    if (attempt == 3)
      fail(kSource, "hessian",
           "not positive definite even with damp = {}; use more (or more varied) calibration tokens or a larger damp",
           damp);
    damp = damp > 0 ? damp * 10 : 1e-4;
  }
  hp.clear();
  hp.shrink_to_fit();
  std::vector<float> u(ud.begin(), ud.end());  // [in, in] upper, H^-1 = U^T U
  ud.clear();
  ud.shrink_to_fit();

  // Weights in processing order.
  std::vector<float> wp(static_cast<size_t>(out * in));  // [out, in]
  parallel_for(out, std::max<int64_t>(1, 16384 / in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t p = 0; p < in; ++p) wp[size_t(r * in + p)] = wf[size_t(r * in + order[p])];
  });

  const int64_t ng = in / group;
  const bool stat = opt.static_groups;
  std::vector<IntGrid> grids(static_cast<size_t>(out * ng));  // [out, ng]; static: input groups, else position groups
  if (stat)
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < ng; ++g)
        grids[size_t(r * ng + g)] = int_grid(&wf[size_t(r * in + g * group)], group, opt.bits, opt.symmetric);
  wf.clear();
  wf.shrink_to_fit();
  auto group_of = [&](int64_t p) { return stat ? int64_t(order[p]) / group : p / group; };

  std::vector<int8_t> codes(static_cast<size_t>(out * in));  // [out, in] in processing order
  std::vector<double> row_loss(size_t(out), 0.0);
  const int64_t B = std::min(opt.block, in);
  constexpr int64_t kRows = 32;   // rows processed together (U rows reused from cache)
  constexpr int64_t kTile = 256;  // columns per tile of the lazy update

  parallel_for(out, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> err(static_cast<size_t>(kRows * B));  // [rows, B] scaled errors of the current block
    for (int64_t r0 = c0; r0 < c1; r0 += kRows) {
      const int64_t rows = std::min(kRows, c1 - r0);
      // W[:, i2:] -= Err[:, k0:k1] @ U[k0:k1, i2:] for this chunk's rows.
      auto flush = [&](int64_t i1, int64_t k0, int64_t k1, int64_t i2) {
        for (int64_t j0 = i2; j0 < in; j0 += kTile) {
          const int64_t j1 = std::min(in, j0 + kTile);
          for (int64_t r = 0; r < rows; ++r) {
            float* wr = &wp[size_t((r0 + r) * in)];
            for (int64_t k = k0; k < k1; ++k) {
              const float e = err[size_t(r * B + k - i1)];
              const float* uk = &u[size_t(k * in)];
              for (int64_t j = j0; j < j1; ++j) wr[j] -= e * uk[j];
            }
          }
        }
      };
      for (int64_t i1 = 0; i1 < in; i1 += B) {
        const int64_t i2 = std::min(in, i1 + B);
        int64_t flushed = i1;  // errors of [i1, flushed) are already applied to [i2, in)
        for (int64_t p = i1; p < i2; ++p) {
          if (!stat && p % group == 0) {
            const int64_t g_end = std::min(in, p + group);
            if (g_end > i2 && flushed < p) {  // the group reaches past this block: bring it up to date
              flush(i1, flushed, p, i2);
              flushed = p;
            }
            for (int64_t r = 0; r < rows; ++r)
              grids[size_t((r0 + r) * ng + p / group)] =
                  int_grid(&wp[size_t((r0 + r) * in + p)], g_end - p, opt.bits, opt.symmetric);
          }
          const float* up = &u[size_t(p * in)];
          const float d = up[p];
          const int64_t g = group_of(p);
          for (int64_t r = 0; r < rows; ++r) {
            float* wr = &wp[size_t((r0 + r) * in)];
            const IntGrid& grid = grids[size_t((r0 + r) * ng + g)];
            const float x = wr[p];
            const int c = grid.code(x);
            const float diff = x - grid.value(c);
            codes[size_t((r0 + r) * in + p)] = int8_t(c);
            row_loss[size_t(r0 + r)] += double(diff) * diff / (double(d) * d);
            const float e = diff / d;
            err[size_t(r * B + p - i1)] = e;
            for (int64_t j = p + 1; j < i2; ++j) wr[j] -= e * up[j];
          }
        }
        flush(i1, flushed, i2, i2);
      }
    }
  });

  QuantWeight q;
  q.scheme = opt.bits == 8 ? QuantScheme::Int8 : QuantScheme::Int4;
  q.out = out;
  q.in = in;
  q.group = group;
  const bool permuted = opt.act_order && !stat;  // else stored in input order
  if (opt.bits == 8) {
    q.qdata = Tensor::empty({out, in}, DType::I8);  // [out, in]
  } else {
    q.qdata = Tensor::zeros({out, in / 2}, DType::U8);  // [out, in / 2]
    q.zeros = Tensor::empty({out, ng}, DType::F32);     // [out, in / group]
  }
  q.scales = Tensor::empty({out, ng}, DType::F32);  // [out, in / group]
  parallel_for(out, std::max<int64_t>(1, 16384 / in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < ng; ++g) {
        const IntGrid& grid = grids[size_t(r * ng + g)];
        q.scales.data_as<float>()[r * ng + g] = grid.scale;
        if (opt.bits == 4) q.zeros.data_as<float>()[r * ng + g] = grid.zero;
      }
      for (int64_t p = 0; p < in; ++p) {
        const int64_t col = permuted ? p : order[p];
        const int8_t c = codes[size_t(r * in + p)];
        if (opt.bits == 8)
          q.qdata.data_as<int8_t>()[r * in + col] = c;
        else
          set_nibble(q.qdata.data_as<uint8_t>() + r * (in / 2), col, uint8_t(c));
      }
    }
  });
  if (permuted) {
    q.perm = Tensor::empty({in}, DType::I32);  // [in]
    std::copy(order.begin(), order.end(), q.perm.data_as<int32_t>());
  }
  if (stats) {
    stats->loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
    stats->dead_columns = dead;
    stats->damp = damp;
  }
  return q;
}

}  // namespace

QuantWeight gptq_quantize(const Tensor& w, const Tensor& hessian, const GptqOptions& options, GptqStats* stats) {
  std::vector<float> hf = checked_floats(hessian, kSource, "hessian");
  if (w.defined() && w.ndim() == 2 && (hessian.dim(0) != w.dim(1) || hessian.dim(1) != w.dim(1)))
    fail(kSource, "hessian", "expected [{}, {}] for a weight {}, got {}", w.dim(1), w.dim(1), w.shape_str(),
         hessian.shape_str());
  return gptq_impl(w, std::vector<double>(hf.begin(), hf.end()), options, stats);
}

QuantWeight gptq_quantize(const Tensor& w, const HessianAccumulator& hessian, const GptqOptions& options,
                          GptqStats* stats) {
  if (w.defined() && w.ndim() == 2 && hessian.in() != w.dim(1))
    fail(kSource, "hessian", "accumulated for in = {}, but the weight is {}", hessian.in(), w.shape_str());
  return gptq_impl(w, hessian.hessian_f64(), options, stats);
}

}  // namespace kite::quant
