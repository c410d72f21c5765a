#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace kite {
namespace {

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::I8, DType::U8, DType::I32, DType::I64})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

TEST(DType, F16EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
}

TEST(DType, F16RoundsToNearestEven) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) {
    float x = u(rng) * (i % 2 ? 1e-4f : 1.0f);
    uint16_t h = f32_to_f16(x);
    float y = f16_to_f32(h);
    if (std::isinf(y)) continue;
    // No other f16 is closer.
    float up = f16_to_f32(uint16_t(h + 1)), down = f16_to_f32(uint16_t(h - 1));
    if (!std::isnan(up) && !std::isinf(up)) {
      EXPECT_LE(std::fabs(y - x), std::fabs(up - x)) << x;
    }
    if ((h & 0x7fff) != 0 && !std::isnan(down)) {
      EXPECT_LE(std::fabs(y - x), std::fabs(down - x)) << x;
    }
  }
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
}

TEST(DType, Fp8E4M3) {
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7f)));
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7f) == 0x7f) continue;
    float f = fp8_e4m3_to_f32(uint8_t(v));
    if (v == 0x80) continue;  // -0 encodes as 0x80
    EXPECT_EQ(f32_to_fp8_e4m3(f), v) << v;
  }
  EXPECT_EQ(f32_to_fp8_e4m3(1000.0f), 0x7e);  // saturates
  EXPECT_EQ(f32_to_fp8_e4m3(-1000.0f), 0xfe);
}

}  // namespace
}  // namespace kite
