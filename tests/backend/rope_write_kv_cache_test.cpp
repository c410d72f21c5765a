// The fused rope_write_kv_cache on the CPU: bit for bit what rope on q and k
// followed by write_kv_cache gives, k left untouched, and its argument checks.
#include "backend/ops/rope_write_kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/ops/rope.h"
#include "backend/ops/write_kv_cache.h"
#include "backend_test_util.h"

namespace kite {
namespace {

// Bitwise equality (NaN payloads included): the cache's untouched slots hold NaN.
bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

std::vector<float> inv_freqs(int64_t r, int64_t head_dim, double base) {
  std::vector<float> f(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j) f[size_t(j)] = float(1.0 / std::pow(base, double(2 * j) / double(head_dim)));
  return f;
}

TEST(RopeWriteKvCache, EqualsRopeThenWriteKvCacheBitwise) {
  struct Case {
    int64_t n, nh, nkv, hd, r, bs, num_blocks;
    float factor;
  };
  const Case cases[] = {
      {9, 4, 2, 16, 8, 4, 5, 1.0f},     // full rotary
      {33, 6, 3, 64, 16, 16, 4, 0.8f},  // partial rotary, attention factor
      {17, 8, 8, 128, 64, 5, 7, 1.0f},  // MHA, odd block size
      {1, 2, 1, 10, 5, 3, 2, 1.3f},
  };
  uint32_t seed = 50;
  for (const Case& c : cases) {
    ++seed;
    std::mt19937 rng(seed);
    Tensor q = test::random_tensor({c.n, c.nh, c.hd}, DType::F32, seed * 3);
    const Tensor k = test::random_tensor({c.n, c.nkv, c.hd}, DType::F32, seed * 3 + 1);
    const Tensor v = test::random_tensor({c.n, c.nkv, c.hd}, DType::F32, seed * 3 + 2);
    std::vector<int32_t> pos(static_cast<size_t>(c.n));
    for (int32_t& p : pos) p = std::uniform_int_distribution<int32_t>(0, 40000)(rng);
    // Distinct slots, every third row padding (-1).
    std::vector<int32_t> all(static_cast<size_t>(c.num_blocks * c.bs));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(static_cast<size_t>(c.n));
    for (int64_t t = 0; t < c.n; ++t) slots[size_t(t)] = t % 3 == 1 ? -1 : all[size_t(t)];
    const Tensor positions = test::i32_tensor({c.n}, pos), slot_mapping = test::i32_tensor({c.n}, slots);
    const Tensor inv_freq = Tensor::from_floats({c.r}, inv_freqs(c.r, c.hd, 10000.0));
    const Shape cache_shape = {c.num_blocks, c.bs, c.nkv, c.hd};

    // The reference: the two ops one after the other.
    Tensor want_q = q.to(kCpu), want_k = k.to(kCpu);
    Tensor want_kc = test::nan_tensor(cache_shape), want_vc = test::nan_tensor(cache_shape);
    ops::rope(want_q, positions, inv_freq, c.factor);
    ops::rope(want_k, positions, inv_freq, c.factor);
    ops::write_kv_cache(want_k, v, slot_mapping, want_kc, want_vc);

    const Tensor k_before = k.to(kCpu), q_before = q.to(kCpu);
    Tensor kc = test::nan_tensor(cache_shape), vc = test::nan_tensor(cache_shape);
    ops::rope_write_kv_cache(q, k, v, positions, inv_freq, c.factor, slot_mapping, kc, vc);
    const std::string what = fmt::format("n={} heads={}/{} hd={} r={}", c.n, c.nh, c.nkv, c.hd, c.r);
    EXPECT_TRUE(same_bits(q, want_q)) << what << ": q";
    EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": k_cache";
    EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": v_cache";
    EXPECT_TRUE(same_bits(k, k_before)) << what << ": k must be left as it was";
    // The rotation did something (the comparisons above are not vacuous).
    EXPECT_FALSE(same_bits(q, q_before)) << what;
    EXPECT_FALSE(same_bits(want_k, k_before)) << what;
  }
}

// The fused-QKV variant: bitwise what splitting qkv and calling
// rope_write_kv_cache gives, qkv left as it was.
TEST(RopeWriteKvCacheFused, EqualsSplitThenRopeWriteKvCacheBitwise) {
  struct Case {
    int64_t n, nh, nkv, hd, r, bs, num_blocks;
    float factor;
  };
  const Case cases[] = {
      {9, 4, 2, 16, 8, 4, 5, 1.0f},     // full rotary
      {33, 6, 3, 64, 16, 16, 4, 0.8f},  // partial rotary, attention factor
      {17, 8, 8, 128, 64, 5, 7, 1.0f},  // MHA, odd block size
      {1, 2, 1, 10, 5, 3, 2, 1.3f},     // one token
      {13, 12, 4, 24, 7, 2, 11, 1.0f},  // odd r, partial rotary
  };
  uint32_t seed = 150;
  for (const Case& c : cases) {
    ++seed;
    std::mt19937 rng(seed);
    const int64_t nq = c.nh + 2 * c.nkv;
    const Tensor qkv = test::random_tensor({c.n, nq, c.hd}, DType::F32, seed * 5);
    std::vector<int32_t> pos(static_cast<size_t>(c.n));
    for (int32_t& p : pos) p = std::uniform_int_distribution<int32_t>(0, 40000)(rng);
    std::vector<int32_t> all(static_cast<size_t>(c.num_blocks * c.bs));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(static_cast<size_t>(c.n));
    for (int64_t t = 0; t < c.n; ++t) slots[size_t(t)] = t % 3 == 1 ? -1 : all[size_t(t)];
    const Tensor positions = test::i32_tensor({c.n}, pos), slot_mapping = test::i32_tensor({c.n}, slots);
    const Tensor inv_freq = Tensor::from_floats({c.r}, inv_freqs(c.r, c.hd, 10000.0));
    const Shape cache_shape = {c.num_blocks, c.bs, c.nkv, c.hd};

    // The reference: split copies (element by element), then the op.
    Tensor want_q = qkv.slice(1, 0, c.nh).contiguous();
    const Tensor k = qkv.slice(1, c.nh, c.nh + c.nkv).contiguous(), v = qkv.slice(1, c.nh + c.nkv, nq).contiguous();
    Tensor want_kc = test::nan_tensor(cache_shape), want_vc = test::nan_tensor(cache_shape);
    ops::rope_write_kv_cache(want_q, k, v, positions, inv_freq, c.factor, slot_mapping, want_kc, want_vc);

    const Tensor qkv_before = qkv.to(kCpu);
    Tensor q = test::nan_tensor({c.n, c.nh, c.hd});
    Tensor kc = test::nan_tensor(cache_shape), vc = test::nan_tensor(cache_shape);
    ops::rope_write_kv_cache_fused(qkv, positions, inv_freq, c.factor, slot_mapping, q, kc, vc);
    const std::string what = fmt::format("n={} heads={}/{} hd={} r={}", c.n, c.nh, c.nkv, c.hd, c.r);
    EXPECT_TRUE(same_bits(q, want_q)) << what << ": q";
    EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": k_cache";
    EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": v_cache";
    EXPECT_TRUE(same_bits(qkv, qkv_before)) << what << ": qkv must be left as it was";
  }
}

Tensor f32(const Shape& s) { return Tensor::zeros(s, DType::F32); }
Tensor i32(const Shape& s, const std::vector<int32_t>& v) { return test::i32_tensor(s, v); }

TEST(RopeWriteKvCacheFused, RejectsBadArguments) {
  // Three tokens, 4 query heads over 2 KV heads (qkv: 8 heads), head_dim 8, 3 blocks of 4 slots.
  Tensor qkv = f32({3, 8, 8}), q = f32({3, 4, 8}), kc = f32({3, 4, 2, 8}), vc = f32({3, 4, 2, 8});
  Tensor pos = i32({3}, {0, 1, 2}), freq = Tensor::from_floats({4}, {1.0f, 0.1f, 0.01f, 0.001f});
  Tensor slots = i32({3}, {5, -1, 11});
  const auto run = [&](const Tensor& qkv_, Tensor& q_, const Tensor& pos_, const Tensor& slots_, Tensor& kc_,
                       Tensor& vc_) { ops::rope_write_kv_cache_fused(qkv_, pos_, freq, 1.0f, slots_, q_, kc_, vc_); };
  const std::string op = "rope_write_kv_cache_fused";
  EXPECT_NO_THROW(run(qkv, q, pos, slots, kc, vc));
  using test::expect_op_error;
  expect_op_error(op, "qkv", [&] { run(f32({3, 9, 8}), q, pos, slots, kc, vc); });  // not nh + 2 nkv heads
  expect_op_error(op, "qkv", [&] { run(Tensor::zeros({3, 8, 8}, DType::BF16), q, pos, slots, kc, vc); });
  expect_op_error(op, "q", [&] {
    Tensor b = f32({2, 4, 8});
    run(qkv, b, pos, slots, kc, vc);
  });
  expect_op_error(op, "q", [&] {
    Tensor b = qkv.slice(1, 0, 4);  // a view of qkv
    run(qkv, b, pos, slots, kc, vc);
  });
  expect_op_error(op, "positions", [&] { run(qkv, q, i32({2}, {0, 1}), slots, kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { run(qkv, q, pos, i32({3}, {7, 1, 7}), kc, vc); });
  expect_op_error(op, "k_cache", [&] {
    Tensor c = f32({3, 4, 2, 4});
    run(qkv, q, pos, slots, c, vc);
  });
  expect_op_error(op, "v_cache", [&] { run(qkv, q, pos, slots, kc, kc); });
}

TEST(RopeWriteKvCache, RejectsBadArguments) {
  // Three tokens, 4 query heads over 2 KV heads, head_dim 8, 3 blocks of 4 slots.
  Tensor q = f32({3, 4, 8}), k = f32({3, 2, 8}), v = f32({3, 2, 8}), kc = f32({3, 4, 2, 8}), vc = f32({3, 4, 2, 8});
  Tensor pos = i32({3}, {0, 1, 2}), freq = Tensor::from_floats({4}, {1.0f, 0.1f, 0.01f, 0.001f});
  Tensor slots = i32({3}, {5, -1, 11});
  const auto run = [&](Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& pos_, const Tensor& freq_,
                       float factor, const Tensor& slots_, Tensor& kc_,
                       Tensor& vc_) { ops::rope_write_kv_cache(q_, k_, v_, pos_, freq_, factor, slots_, kc_, vc_); };
  const std::string op = "rope_write_kv_cache";
  EXPECT_NO_THROW(run(q, k, v, pos, freq, 1.0f, slots, kc, vc));
  Tensor empty_q = f32({0, 4, 8});
  EXPECT_NO_THROW(run(empty_q, f32({0, 2, 8}), f32({0, 2, 8}), i32({0}, {}), freq, 1.0f, i32({0}, {}), kc, vc));

  using test::expect_op_error;
  expect_op_error(op, "q", [&] {
    Tensor b = Tensor::zeros({3, 4, 8}, DType::BF16);  // BF16 runs on CUDA only
    run(b, k, v, pos, freq, 1.0f, slots, kc, vc);
  });
  expect_op_error(op, "k", [&] { run(q, f32({2, 2, 8}), v, pos, freq, 1.0f, slots, kc, vc); });
  expect_op_error(op, "k", [&] { run(q, f32({3, 2, 4}), v, pos, freq, 1.0f, slots, kc, vc); });
  expect_op_error(op, "v", [&] { run(q, k, f32({3, 1, 8}), pos, freq, 1.0f, slots, kc, vc); });
  expect_op_error(op, "positions", [&] { run(q, k, v, i32({2}, {0, 1}), freq, 1.0f, slots, kc, vc); });
  expect_op_error(op, "positions", [&] { run(q, k, v, f32({3}), freq, 1.0f, slots, kc, vc); });
  expect_op_error(op, "inv_freq", [&] { run(q, k, v, pos, f32({5}), 1.0f, slots, kc, vc); });
  expect_op_error(op, "attention_factor", [&] { run(q, k, v, pos, freq, NAN, slots, kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { run(q, k, v, pos, freq, 1.0f, i32({3}, {0, 12, 1}), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { run(q, k, v, pos, freq, 1.0f, i32({3}, {0, -2, 1}), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { run(q, k, v, pos, freq, 1.0f, i32({3}, {7, 1, 7}), kc, vc); });
  expect_op_error(op, "k_cache", [&] {
    Tensor c = f32({3, 4, 3, 8});
    run(q, k, v, pos, freq, 1.0f, slots, c, vc);
  });
  expect_op_error(op, "v_cache", [&] {
    Tensor c = f32({2, 4, 2, 8});
    run(q, k, v, pos, freq, 1.0f, slots, kc, c);
  });
  expect_op_error(op, "v_cache", [&] { run(q, k, v, pos, freq, 1.0f, slots, kc, kc); });
  expect_op_error(op, "q", [&] {
    // q over k's memory.
    Tensor q2 = k.reshape({3, 2, 8});
    run(q2, k, v, pos, freq, 1.0f, slots, kc, vc);
  });
  // A rejected call writes nothing: neither q nor the caches.
  Tensor q3 = test::random_tensor({3, 4, 8}, DType::F32, 9), kc3 = f32({3, 4, 2, 8}), vc3 = f32({3, 4, 2, 8});
  const Tensor q3_before = q3.to(kCpu);
  Tensor k3 = test::random_tensor({3, 2, 8}, DType::F32, 10);
  expect_op_error(op, "slot_mapping", [&] { run(q3, k3, k3, pos, freq, 1.0f, i32({3}, {1, 1, 2}), kc3, vc3); });
  EXPECT_TRUE(same_bits(q3, q3_before));
  for (float x : kc3.to_floats()) ASSERT_EQ(x, 0.0f);
  for (float x : vc3.to_floats()) ASSERT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace kite
