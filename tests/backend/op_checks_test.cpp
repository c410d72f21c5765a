// Misuse of every op raises kite::Error naming the op and the argument.
#include <gtest/gtest.h>

#include <cstdlib>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/ops/ops.h"
#include "backend_test_util.h"
#include "core/error.h"

namespace kite {
namespace {

using test::expect_op_error;

Tensor f32(const Shape& s) { return Tensor::zeros(s, DType::F32); }

TEST(OpChecks, Linear) {
  Tensor x = f32({2, 8}), w = f32({4, 8}), y = f32({2, 4});
  expect_op_error("linear", "x", [&] { ops::linear(Tensor::zeros({2, 8}, DType::BF16), w, nullptr, y); });
  expect_op_error("linear", "x", [&] { ops::linear(f32({2, 2, 4}), w, nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, f32({4, 7}), nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, Tensor::zeros({4, 8}, DType::I32), nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, Tensor(), nullptr, y); });
  Tensor bad_bias = f32({5});
  expect_op_error("linear", "bias", [&] { ops::linear(x, w, &bad_bias, y); });
  expect_op_error("linear", "y", [&] {
    Tensor y2 = f32({3, 4});
    ops::linear(x, w, nullptr, y2);
  });
  expect_op_error("linear", "y", [&] {
    Tensor y2 = f32({2, 5});
    ops::linear(x, w, nullptr, y2);
  });
  expect_op_error("linear", "y", [&] {
    Tensor y2 = Tensor::zeros({2, 4}, DType::BF16);
    ops::linear(x, w, nullptr, y2);
  });
  // A transposed (non-contiguous) view of w.
  Tensor wt = f32({8, 8}).slice(1, 0, 4);
  expect_op_error("linear", "w", [&] { ops::linear(f32({2, 4}), wt, nullptr, y); });
  // y over x's memory.
  Tensor sq = f32({2, 2});
  expect_op_error("linear", "y", [&] { ops::linear(sq, f32({2, 2}), nullptr, sq); });
}

TEST(OpChecks, RmsNorm) {
  Tensor x = f32({2, 8}), w = f32({8}), out = f32({2, 8});
  expect_op_error("rms_norm", "weight", [&] { ops::rms_norm(x, f32({7}), 1e-5f, out); });
  expect_op_error("rms_norm", "weight", [&] { ops::rms_norm(x, Tensor::zeros({8}, DType::I8), 1e-5f, out); });
  expect_op_error("rms_norm", "x", [&] { ops::rms_norm(f32({8}), w, 1e-5f, out); });
  expect_op_error("rms_norm", "out", [&] {
    Tensor o = f32({2, 9});
    ops::rms_norm(x, w, 1e-5f, o);
  });
  expect_op_error("rms_norm", "eps", [&] { ops::rms_norm(x, w, -1.0f, out); });
  expect_op_error("rms_norm", "eps", [&] { ops::rms_norm(x, w, std::nanf(""), out); });
  // Partial overlap with x (shifted by one row) is refused; exact aliasing is fine.
  Tensor big = f32({3, 8});
  Tensor lo = big.slice(0, 0, 2), hi = big.slice(0, 1, 3);
  expect_op_error("rms_norm", "out", [&] { ops::rms_norm(lo, w, 1e-5f, hi); });
  EXPECT_NO_THROW(ops::rms_norm(lo, w, 1e-5f, lo));
}

TEST(OpChecks, Rope) {
  Tensor x = f32({3, 2, 8});
  Tensor pos = Tensor::zeros({3}, DType::I32), freq = f32({4});
  expect_op_error("rope", "positions", [&] { ops::rope(x, f32({3}), freq, 1.0f); });
  expect_op_error("rope", "positions", [&] { ops::rope(x, Tensor::zeros({2}, DType::I32), freq, 1.0f); });
  expect_op_error("rope", "inv_freq", [&] { ops::rope(x, pos, f32({5}), 1.0f); });
  // A 2-D inv_freq: one row per token, at most head_dim / 2 columns.
  EXPECT_NO_THROW(ops::rope(x, pos, f32({3, 4}), 1.0f));
  expect_op_error("rope", "inv_freq", [&] { ops::rope(x, pos, f32({2, 4}), 1.0f); });
  expect_op_error("rope", "inv_freq", [&] { ops::rope(x, pos, f32({3, 5}), 1.0f); });
  expect_op_error("rope", "inv_freq", [&] { ops::rope(x, pos, f32({3, 1, 4}), 1.0f); });
  expect_op_error("rope", "inv_freq", [&] { ops::rope(x, pos, Tensor::zeros({3, 4}, DType::I32), 1.0f); });
  expect_op_error("rope", "x", [&] {
    Tensor x2 = f32({3, 16});
    ops::rope(x2, pos, freq, 1.0f);
  });
  expect_op_error("rope", "attention_factor", [&] { ops::rope(x, pos, freq, INFINITY); });
}

TEST(OpChecks, Attention) {
  Tensor q = f32({2, 6, 8}), k = f32({5, 2, 8}), v = f32({5, 2, 8}), out = f32({2, 6, 8});
  EXPECT_NO_THROW(ops::attention(q, k, v, 3, 0.5f, out));
  expect_op_error("attention", "k", [&] { ops::attention(q, k, v, 4, 0.5f, out); });  // 4 + 2 > 5 rows
  expect_op_error("attention", "q_start", [&] { ops::attention(q, k, v, -1, 0.5f, out); });
  expect_op_error("attention", "k", [&] { ops::attention(q, f32({5, 4, 8}), f32({5, 4, 8}), 0, 0.5f, out); });
  expect_op_error("attention", "k", [&] { ops::attention(q, f32({5, 2, 9}), v, 0, 0.5f, out); });
  expect_op_error("attention", "v", [&] { ops::attention(q, k, f32({4, 2, 8}), 0, 0.5f, out); });
  expect_op_error("attention", "out", [&] {
    Tensor o = f32({2, 6, 9});
    ops::attention(q, k, v, 0, 0.5f, o);
  });
  expect_op_error("attention", "out", [&] { ops::attention(q, k, v, 0, 0.5f, q); });
  expect_op_error("attention", "scale", [&] { ops::attention(q, k, v, 0, NAN, out); });
}

TEST(OpChecks, EmbeddingRejectsOutOfRangeIds) {
  Tensor table = Tensor::zeros({10, 4}, DType::BF16), out = f32({2, 4});
  Tensor ids = Tensor::zeros({2}, DType::I32);
  ids.data_as<int32_t>()[1] = 10;
  expect_op_error("embedding", "ids", [&] { ops::embedding(table, ids, out); });
  ids.data_as<int32_t>()[1] = -1;
  expect_op_error("embedding", "ids", [&] { ops::embedding(table, ids, out); });
  expect_op_error("embedding", "ids", [&] { ops::embedding(table, Tensor::zeros({2}, DType::I64), out); });
  expect_op_error("embedding", "out", [&] {
    Tensor o = f32({2, 5});
    ids.data_as<int32_t>()[1] = 1;
    ops::embedding(table, ids, o);
  });
}

TEST(OpChecks, Elementwise) {
  Tensor a = f32({2, 8}), b = f32({2, 8}), out = f32({2, 8});
  expect_op_error("add", "b", [&] { ops::add(a, f32({2, 7}), out); });
  expect_op_error("add", "b", [&] { ops::add(a, f32({16}), out); });
  expect_op_error("add", "out", [&] {
    Tensor o = f32({8, 2});
    ops::add(a, b, o);
  });
  expect_op_error("silu_mul", "up", [&] { ops::silu_mul(a, Tensor::zeros({2, 8}, DType::F16), out); });
  expect_op_error("silu_mul", "gate", [&] { ops::silu_mul(Tensor(), b, out); });
  EXPECT_NO_THROW(ops::silu_mul(a, b, b));
  EXPECT_NO_THROW(ops::add(a, b, a));
}

TEST(SimdLevels, ScalarAlwaysAvailableAndClampedToHardware) {
  std::vector<cpu::SimdLevel> levels = cpu::available_simd_levels();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), cpu::SimdLevel::Scalar);
  EXPECT_EQ(levels.back(), cpu::detected_simd_level());
  EXPECT_LE(int(cpu::simd_level()), int(cpu::detected_simd_level()));
  EXPECT_EQ(cpu::clamp_simd_level(cpu::SimdLevel::Avx512), cpu::detected_simd_level());
  EXPECT_EQ(cpu::clamp_simd_level(cpu::SimdLevel::Scalar), cpu::SimdLevel::Scalar);
  EXPECT_NE(device_description(kCpu).find(cpu::simd_name(cpu::simd_level())), std::string::npos);
}

}  // namespace
}  // namespace kite
