#pragma once
// Helpers shared by the quantizer tests: seeded normal data and the check
// that a call throws kite::Error naming a field.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace kite::quant::test {

// n values ~ N(0, sigma^2), seeded.
inline std::vector<float> normal(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

// f() must throw kite::Error whose field is `field`.
template <typename F>
void expect_error(F&& f, const std::string& field) {
  try {
    f();
    ADD_FAILURE() << "expected kite::Error on field " << field;
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), field) << e.what();
  }
}

}  // namespace kite::quant::test
