#pragma once
// Helpers for the backend tests: seeded random tensors, float64 reference
// values and the SIMD levels to check.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"
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

}  // namespace kite::test
