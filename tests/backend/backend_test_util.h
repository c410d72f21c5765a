#pragma once
// Helpers for the backend tests: seeded random tensors, float64 reference
// values and the SIMD levels to check.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace kite::test {

// Uniform values in [lo, hi), rounded to `dtype` so the tensor holds them exactly.
inline Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  Tensor t = Tensor::from_floats(shape, v);
  return dtype == DType::F32 ? t : t.to_dtype(dtype);
}

// An F32 tensor filled with NaN, so an output element a kernel forgets to
// write fails every comparison.
inline Tensor nan_tensor(const Shape& shape) {
  return Tensor::from_floats(shape, std::vector<float>(size_t(shape_numel(shape)), std::nanf("")));
}

// The tensor's values as doubles (any float dtype, exact).
inline std::vector<double> to_doubles(const Tensor& t) {
  std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}

// The SIMD levels this CPU can run, named for test output.
inline std::vector<cpu::SimdLevel> simd_levels() { return cpu::available_simd_levels(); }

// Checks |got[i] - want[i]| <= rtol * scale[i] + atol for every element,
// reporting the first few failures. `scale` is the magnitude that rounding
// error is proportional to (|want| for elementwise ops, sum |terms| for sums).
inline void expect_close(const std::vector<float>& got, const std::vector<double>& want,
                         const std::vector<double>& scale, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]);
    const double tol = rtol * scale[i] + atol;
    if (!(err <= tol)) {
      ++bad;
      if (reported++ < 5)
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i] << " (err " << err
                      << " > tol " << tol << ")";
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance";
}

inline void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rtol, double atol,
                         const std::string& what) {
  std::vector<double> scale(want.size());
  for (size_t i = 0; i < want.size(); ++i) scale[i] = std::abs(want[i]);
  expect_close(got, want, scale, rtol, atol, what);
}

// Causal GQA attention in float64 (see ops::attention): out and the error
// scale sum_j p_j |v_j| per element. With window W >= 1 (a sliding window)
// the query at position p sees only keys j with p - W < j <= p.
// q: [n_q, n_heads, hd]; k, v: [n_kv, n_kv_heads, hd]; out: [n_q, n_heads, hd].
inline void reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, double scale,
                                std::vector<double>& out, std::vector<double>& err_scale, int64_t window = 0) {
  const int64_t n_q = q.dim(0), nh = q.dim(1), hd = q.dim(2), nkv = k.dim(1), group = nh / nkv;
  std::vector<double> qd = to_doubles(q), kd = to_doubles(k), vd = to_doubles(v);
  out.assign(size_t(n_q * nh * hd), 0.0);
  err_scale.assign(out.size(), 0.0);
  for (int64_t i = 0; i < n_q; ++i)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / group, pos = q_start + i, len = pos + 1;
      std::vector<double> s(static_cast<size_t>(len), -std::numeric_limits<double>::infinity());
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < len; ++j) {
        if (window > 0 && pos - j >= window) continue;  // outside the window: weight 0
        double d = 0;
        for (int64_t t = 0; t < hd; ++t) d += qd[size_t((i * nh + h) * hd + t)] * kd[size_t((j * nkv + g) * hd + t)];
        s[size_t(j)] = d * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double sum = 0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < len; ++j)
        for (int64_t t = 0; t < hd; ++t) {
          const double vv = vd[size_t((j * nkv + g) * hd + t)];
          out[size_t((i * nh + h) * hd + t)] += s[size_t(j)] / sum * vv;
          err_scale[size_t((i * nh + h) * hd + t)] += s[size_t(j)] / sum * std::abs(vv);
        }
    }
}

// An I32 CPU tensor with the given values (ids, positions, block tables).
inline Tensor i32_tensor(const Shape& shape, const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty(shape, DType::I32);
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.data_as<int32_t>());
  return t;
}

// Runs fn, expecting kite::Error from source "op <op>" about `field`.
template <typename Fn>
void expect_op_error(const std::string& op, const std::string& field, Fn&& fn) {
  try {
    fn();
    ADD_FAILURE() << "op " << op << ": expected an error about " << field;
  } catch (const Error& e) {
    EXPECT_EQ(e.source(), "op " + op) << e.what();
    EXPECT_EQ(e.field(), field) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
}

}  // namespace kite::test
