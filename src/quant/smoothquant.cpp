#include "quant/smoothquant.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/rtn.h"

namespace kite::quant {

namespace {

constexpr const char* kSource = "smoothquant";

std::vector<float> checked_vector(const Tensor& s, const char* field, int64_t n) {
  if (!s.defined() || s.ndim() != 1 || s.dim(0) != n || !dtype_is_float(s.dtype()))
    fail(kSource, field, "expected a float [{}] tensor, got {}", n, s.defined() ? s.shape_str() : "nothing");
  std::vector<float> v = s.to_floats();
  for (int64_t j = 0; j < n; ++j)
    if (!std::isfinite(v[size_t(j)])) fail(kSource, field, "element {} is {}", j, v[size_t(j)]);
  return v;
}

Tensor scale_columns(const Tensor& m, const Tensor& s, bool divide) {
  std::vector<float> mf = checked_floats(m, kSource, "m", /*flatten=*/true);
  const int64_t in = m.dim(-1);
  std::vector<float> sv = checked_vector(s, "s", in);
  for (int64_t j = 0; j < in; ++j)
    if (!(sv[size_t(j)] > 0.0f))
      fail(kSource, "s", "element {} is {}; smoothing factors must be positive", j, sv[size_t(j)]);
  const int64_t rows = in ? int64_t(mf.size()) / in : 0;
  Tensor r = Tensor::empty(m.shape(), DType::F32);  // m's shape
  float* o = r.data_as<float>();
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(in, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t t = r0; t < r1; ++t)
      for (int64_t j = 0; j < in; ++j) {
        const float v = mf[size_t(t * in + j)];
        o[t * in + j] = divide ? v / sv[size_t(j)] : v * sv[size_t(j)];
      }
  });
  return r;
}

}  // namespace

ActAbsMaxAccumulator::ActAbsMaxAccumulator(int64_t in) : in_(in) {
  if (in < 1) fail(kSource, "in", "{} is not an input dimension", in);
  absmax_.assign(size_t(in), 0.0f);
}

void ActAbsMaxAccumulator::add(const Tensor& x) {
  std::vector<float> xf = checked_floats(x, kSource, "x", /*flatten=*/true);
  if (x.dim(-1) != in_)
    fail(kSource, "x", "{} has {} columns; the accumulator is for in = {}", x.shape_str(), x.dim(-1), in_);
  const int64_t n = int64_t(xf.size()) / in_;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < in_; ++j)
      absmax_[size_t(j)] = std::max(absmax_[size_t(j)], std::fabs(xf[size_t(t * in_ + j)]));
  samples_ += n;
}

Tensor ActAbsMaxAccumulator::absmax() const { return Tensor::from_floats({in_}, absmax_); }

Tensor smooth_factors(const Tensor& act_absmax, const std::vector<const Tensor*>& ws, double alpha) {
  if (!(alpha >= 0.0 && alpha <= 1.0))
    fail(kSource, "alpha", "{} is outside [0, 1]; the paper uses 0.5 (0.75-0.85 for some models)", alpha);
  if (!act_absmax.defined() || act_absmax.ndim() != 1)
    fail(kSource, "act_absmax", "expected [in], got {}", act_absmax.defined() ? act_absmax.shape_str() : "nothing");
  const int64_t in = act_absmax.dim(0);
  std::vector<float> a = checked_vector(act_absmax, "act_absmax", in);
  if (ws.empty()) fail(kSource, "weights", "no linears given; pass the weights that read these activations");
  std::vector<float> wmax(size_t(in), 0.0f);
  for (const Tensor* w : ws) {
    if (!w) fail(kSource, "weights", "a null weight pointer");
    std::vector<float> wf = checked_floats(*w, kSource, "weight");
    if (w->dim(1) != in) fail(kSource, "weight", "{} does not have in = {} columns", w->shape_str(), in);
    for (int64_t o = 0; o < w->dim(0); ++o)
      for (int64_t j = 0; j < in; ++j) wmax[size_t(j)] = std::max(wmax[size_t(j)], std::fabs(wf[size_t(o * in + j)]));
  }
  std::vector<float> s(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) {
    const double aj = std::fabs(double(a[size_t(j)])), wj = wmax[size_t(j)];
    s[size_t(j)] = (aj > 0 && wj > 0) ? float(std::max(std::pow(aj, alpha) / std::pow(wj, 1.0 - alpha), 1e-5)) : 1.0f;
  }
  return Tensor::from_floats({in}, s);  // [in]
}

Tensor mul_columns(const Tensor& m, const Tensor& s) { return scale_columns(m, s, false); }
Tensor div_columns(const Tensor& m, const Tensor& s) { return scale_columns(m, s, true); }

QuantWeight smoothquant_quantize(const Tensor& w, const Tensor& s) {
  if (!w.defined() || w.ndim() != 2)
    fail(kSource, "weight", "expected [out, in], got {}", w.defined() ? w.shape_str() : "nothing");
  QuantWeight q = quantize_rtn(mul_columns(w, s), QuantSpec::int8(-1));
  q.act = ActQuant::Int8Token;
  q.smooth = Tensor::from_floats({q.in}, s.to_floats());  // [in]
  return q;
}

}  // namespace kite::quant
