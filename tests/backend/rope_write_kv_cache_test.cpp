// The fused rope_write_kv_cache on the CPU: bit for bit what rope on q and k
// followed by write_kv_cache gives, k left untouched, and its argument checks.
// With Qwen3's q/k norms: bit for bit rms_norm per head first, and a float64
// reference. With per-token frequencies (a 2-D inv_freq, dynamic NTK): bit
// for bit the op run per sequence with that sequence's row.
#include "backend/ops/rope_write_kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/ops/rms_norm.h"
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

// ---- q/k norms and per-token frequencies ---------------------------------------

struct Case {
  int64_t n, nh, nkv, hd, r, bs, num_blocks;
  float factor;
};

// One step's inputs on the CPU: a fused QKV output, positions, slots (every
// third row -1), frequencies per sequence (dynamic NTK gives each sequence
// its own base) and q/k norm weights.
struct Problem {
  Case c;
  std::vector<int64_t> seq_start;  // token ranges of the sequences: [seq_start[s], seq_start[s + 1])
  std::vector<int32_t> pos, slots;
  std::vector<std::vector<float>> seq_freqs;  // [n_seqs][r]
  Tensor qkv;                                 // [n, nh + 2 nkv, hd] F32
  Tensor positions, slot_mapping;             // [n] I32
  Tensor inv_freq_2d;                         // [n, r]: token t's sequence's row
  Tensor q_norm, k_norm;                      // [hd]

  int64_t nq() const { return c.nh + 2 * c.nkv; }
  Shape cache_shape() const { return {c.num_blocks, c.bs, c.nkv, c.hd}; }
  Tensor q() const { return qkv.slice(1, 0, c.nh).contiguous(); }
  Tensor k() const { return qkv.slice(1, c.nh, c.nh + c.nkv).contiguous(); }
  Tensor v() const { return qkv.slice(1, c.nh + c.nkv, nq()).contiguous(); }
  int64_t n_seqs() const { return int64_t(seq_freqs.size()); }
  // Token t's frequency row.
  const std::vector<float>& freqs_of(int64_t t) const {
    int64_t s = 0;
    while (seq_start[size_t(s) + 1] <= t) ++s;
    return seq_freqs[size_t(s)];
  }
};

Problem make_problem(const Case& c, uint32_t seed, DType norm_dtype) {
  Problem p;
  p.c = c;
  std::mt19937 rng(seed);
  p.qkv = test::random_tensor({c.n, p.nq(), c.hd}, DType::F32, seed * 7, -2.0f, 2.0f);
  // Sequences of 1 to 6 tokens, each with its own base (scaled as dynamic NTK does).
  p.seq_start = {0};
  while (p.seq_start.back() < c.n) {
    const int64_t len = std::min<int64_t>(c.n - p.seq_start.back(), 1 + int64_t(rng() % 6));
    p.seq_start.push_back(p.seq_start.back() + len);
    const double base = 10000.0 * std::pow(1.0 + double(rng() % 1000) / 100.0, double(c.hd) / double(c.hd - 2));
    p.seq_freqs.push_back(inv_freqs(c.r, c.hd, base));
  }
  std::vector<float> rows;
  for (int64_t t = 0; t < c.n; ++t) {
    const std::vector<float>& f = p.freqs_of(t);
    rows.insert(rows.end(), f.begin(), f.end());
  }
  p.inv_freq_2d = Tensor::from_floats({c.n, c.r}, rows);
  p.pos.resize(size_t(c.n));
  for (int32_t& x : p.pos) x = std::uniform_int_distribution<int32_t>(0, 40000)(rng);
  std::vector<int32_t> all(static_cast<size_t>(c.num_blocks * c.bs));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  p.slots.resize(size_t(c.n));
  for (int64_t t = 0; t < c.n; ++t) p.slots[size_t(t)] = t % 3 == 1 ? -1 : all[size_t(t)];
  p.positions = test::i32_tensor({c.n}, p.pos);
  p.slot_mapping = test::i32_tensor({c.n}, p.slots);
  p.q_norm = test::random_tensor({c.hd}, norm_dtype, seed * 7 + 1, 0.25f, 2.0f);
  p.k_norm = test::random_tensor({c.hd}, norm_dtype, seed * 7 + 2, 0.25f, 2.0f);
  return p;
}

const Case kNormCases[] = {
    {9, 4, 2, 16, 8, 4, 5, 1.0f},     // full rotary
    {33, 6, 3, 64, 16, 16, 4, 0.8f},  // partial rotary, attention factor
    {17, 8, 8, 128, 64, 5, 7, 1.0f},  // MHA, odd block size
    {1, 2, 1, 10, 5, 3, 2, 1.3f},     // one token
    {13, 12, 4, 24, 7, 2, 11, 1.0f},  // odd r, partial rotary
};

// Each head row of x [n, heads, hd] through ops::rms_norm (a view of x as [n * heads, hd], in place).
void norm_heads(Tensor& x, const Tensor& w, float eps) {
  Tensor rows = x.reshape({x.dim(0) * x.dim(1), x.dim(2)});
  ops::rms_norm(rows, w, eps, rows);
}

TEST(RopeWriteKvCache, QkNormEqualsRmsNormThenRopeThenWriteBitwise) {
  uint32_t seed = 300;
  for (const Case& c : kNormCases)
    for (DType wdt : {DType::F32, DType::BF16, DType::F16})
      for (bool per_token : {false, true}) {
        const Problem p = make_problem(c, ++seed, wdt);
        const float eps = seed % 2 ? 1e-6f : 1e-5f;
        const Tensor inv_freq = per_token ? p.inv_freq_2d : Tensor::from_floats({c.r}, p.seq_freqs[0]);
        const Tensor q_in = p.q(), k = p.k(), v = p.v();
        // The reference: rms_norm per head, rope, write_kv_cache, op by op.
        Tensor want_q = q_in.to(kCpu), want_k = k.to(kCpu);
        Tensor want_kc = test::nan_tensor(p.cache_shape()), want_vc = test::nan_tensor(p.cache_shape());
        norm_heads(want_q, p.q_norm, eps);
        norm_heads(want_k, p.k_norm, eps);
        ops::rope(want_q, p.positions, inv_freq, c.factor);
        ops::rope(want_k, p.positions, inv_freq, c.factor);
        ops::write_kv_cache(want_k, v, p.slot_mapping, want_kc, want_vc);

        const ops::RopeOptions opts{&p.q_norm, &p.k_norm, eps};
        const std::string what = fmt::format("n={} heads={}/{} hd={} r={} norm {} per_token={}", c.n, c.nh, c.nkv, c.hd,
                                             c.r, dtype_name(wdt), per_token);
        {  // split q, k, v
          Tensor q = q_in.to(kCpu);
          Tensor kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
          ops::rope_write_kv_cache(q, k, v, p.positions, inv_freq, c.factor, p.slot_mapping, kc, vc, opts);
          EXPECT_TRUE(same_bits(q, want_q)) << what << ": q";
          EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": k_cache";
          EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": v_cache";
          EXPECT_TRUE(same_bits(k, p.k())) << what << ": k must be left as it was";
        }
        {  // fused qkv
          const Tensor qkv_before = p.qkv.to(kCpu);
          Tensor q = test::nan_tensor({c.n, c.nh, c.hd});
          Tensor kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
          ops::rope_write_kv_cache_fused(p.qkv, p.positions, inv_freq, c.factor, p.slot_mapping, q, kc, vc, opts);
          EXPECT_TRUE(same_bits(q, want_q)) << what << ": fused q";
          EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": fused k_cache";
          EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": fused v_cache";
          EXPECT_TRUE(same_bits(p.qkv, qkv_before)) << what << ": qkv must be left as it was";
        }
        // The norms did something: without them q differs.
        Tensor q_plain = q_in.to(kCpu);
        ops::rope(q_plain, p.positions, inv_freq, c.factor);
        EXPECT_FALSE(same_bits(q_plain, want_q)) << what;
      }
}

// Options without norms (an eps alone) change nothing: bitwise the call without options.
TEST(RopeWriteKvCacheFused, OptionsWithoutNormsChangeNothing) {
  const Problem p = make_problem(kNormCases[1], 400, DType::F32);
  const Case& c = p.c;
  const Tensor inv_freq = Tensor::from_floats({c.r}, p.seq_freqs[0]);
  Tensor q1 = test::nan_tensor({c.n, c.nh, c.hd}), kc1 = test::nan_tensor(p.cache_shape()),
         vc1 = test::nan_tensor(p.cache_shape());
  Tensor q2 = test::nan_tensor({c.n, c.nh, c.hd}), kc2 = test::nan_tensor(p.cache_shape()),
         vc2 = test::nan_tensor(p.cache_shape());
  ops::rope_write_kv_cache_fused(p.qkv, p.positions, inv_freq, c.factor, p.slot_mapping, q1, kc1, vc1);
  ops::rope_write_kv_cache_fused(p.qkv, p.positions, inv_freq, c.factor, p.slot_mapping, q2, kc2, vc2,
                                 ops::RopeOptions{nullptr, nullptr, 1e-6f});
  EXPECT_TRUE(same_bits(q1, q2));
  EXPECT_TRUE(same_bits(kc1, kc2));
  EXPECT_TRUE(same_bits(vc1, vc2));
}

// A 2-D inv_freq [n_tokens, r]: bitwise the op run on each sequence's tokens
// with that sequence's row as a 1-D inv_freq (norms or not, both variants).
TEST(RopeWriteKvCache, PerTokenInvFreqEqualsOneCallPerSequenceBitwise) {
  uint32_t seed = 500;
  for (const Case& c : kNormCases)
    for (bool norm : {false, true}) {
      const Problem p = make_problem(c, ++seed, DType::BF16);
      const ops::RopeOptions opts = norm ? ops::RopeOptions{&p.q_norm, &p.k_norm, 1e-6f} : ops::RopeOptions{};
      const Tensor k = p.k(), v = p.v();
      // The reference: one call per sequence, on its slices of q, k, v, positions and slots.
      Tensor want_q = p.q();
      Tensor want_kc = test::nan_tensor(p.cache_shape()), want_vc = test::nan_tensor(p.cache_shape());
      for (int64_t s = 0; s < p.n_seqs(); ++s) {
        const int64_t lo = p.seq_start[size_t(s)], hi = p.seq_start[size_t(s) + 1];
        Tensor qs = want_q.slice(0, lo, hi);
        const Tensor f = Tensor::from_floats({c.r}, p.seq_freqs[size_t(s)]);
        ops::rope_write_kv_cache(qs, k.slice(0, lo, hi), v.slice(0, lo, hi), p.positions.slice(0, lo, hi), f, c.factor,
                                 p.slot_mapping.slice(0, lo, hi), want_kc, want_vc, opts);
      }
      const std::string what =
          fmt::format("n={} heads={}/{} hd={} r={} seqs={} norm={}", c.n, c.nh, c.nkv, c.hd, c.r, p.n_seqs(), norm);
      {
        Tensor q = p.q(), kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
        ops::rope_write_kv_cache(q, k, v, p.positions, p.inv_freq_2d, c.factor, p.slot_mapping, kc, vc, opts);
        EXPECT_TRUE(same_bits(q, want_q)) << what << ": q";
        EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": k_cache";
        EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": v_cache";
      }
      {
        Tensor q = test::nan_tensor({c.n, c.nh, c.hd});
        Tensor kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
        ops::rope_write_kv_cache_fused(p.qkv, p.positions, p.inv_freq_2d, c.factor, p.slot_mapping, q, kc, vc, opts);
        EXPECT_TRUE(same_bits(q, want_q)) << what << ": fused q";
        EXPECT_TRUE(same_bits(kc, want_kc)) << what << ": fused k_cache";
        EXPECT_TRUE(same_bits(vc, want_vc)) << what << ": fused v_cache";
      }
      // Several sequences with different rows: the per-token rows matter.
      if (p.n_seqs() > 1) {
        Tensor q = p.q(), kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
        ops::rope_write_kv_cache(q, k, v, p.positions, Tensor::from_floats({c.r}, p.seq_freqs[0]), c.factor,
                                 p.slot_mapping, kc, vc, opts);
        EXPECT_FALSE(same_bits(q, want_q)) << what;
      }
    }
}

// Head rows of x [n, heads, hd] normalized (optionally) and rotated in
// float64: the reference of the op on q or k. The angle is formed in F32
// (float(pos) * inv_freq), as in the float32 Hugging Face reference.
// `scale` gets the magnitude each element's rounding error is proportional
// to: (|x1| + |x2|) * |factor| of the normalized pair for rotated dims,
// |x| for the others.
void reference_heads(const Problem& p, const Tensor& x, const Tensor* w, double eps, std::vector<double>& out,
                     std::vector<double>& scale) {
  const int64_t n = x.dim(0), heads = x.dim(1), hd = x.dim(2), r = p.c.r;
  const std::vector<double> xd = test::to_doubles(x);
  const std::vector<double> wd = w ? test::to_doubles(*w) : std::vector<double>();
  out.assign(xd.size(), 0.0);
  scale.assign(xd.size(), 0.0);
  std::vector<double> row(static_cast<size_t>(hd));
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<float>& f = p.freqs_of(t);
    for (int64_t h = 0; h < heads; ++h) {
      const size_t base = size_t((t * heads + h) * hd);
      double ss = 0;
      for (int64_t d = 0; d < hd; ++d) ss += xd[base + size_t(d)] * xd[base + size_t(d)];
      const double inv = 1.0 / std::sqrt(ss / double(hd) + eps);
      for (int64_t d = 0; d < hd; ++d)
        row[size_t(d)] = w ? xd[base + size_t(d)] * inv * wd[size_t(d)] : xd[base + size_t(d)];
      for (int64_t d = 0; d < hd; ++d) {
        out[base + size_t(d)] = row[size_t(d)];
        scale[base + size_t(d)] = std::abs(row[size_t(d)]);
      }
      for (int64_t j = 0; j < r; ++j) {
        const double a = double(float(p.pos[size_t(t)]) * f[size_t(j)]);
        const double x1 = row[size_t(j)], x2 = row[size_t(j + r)], fa = p.c.factor;
        out[base + size_t(j)] = (x1 * std::cos(a) - x2 * std::sin(a)) * fa;
        out[base + size_t(j + r)] = (x2 * std::cos(a) + x1 * std::sin(a)) * fa;
        scale[base + size_t(j)] = scale[base + size_t(j + r)] = (std::abs(x1) + std::abs(x2)) * std::abs(fa);
      }
    }
  }
}

// The rows of a cache [num_blocks, block_size, nkv, hd] the tokens with a slot were written to, in token order.
std::vector<float> written_rows(const Tensor& cache, const std::vector<int32_t>& slots) {
  const int64_t row = cache.dim(2) * cache.dim(3);
  const std::vector<float> all = cache.to_floats();
  std::vector<float> out;
  for (int32_t s : slots)
    if (s >= 0) out.insert(out.end(), all.begin() + s * row, all.begin() + (s + 1) * row);
  return out;
}

// The same tokens' rows of x [n, nkv, hd] (as doubles).
std::vector<double> rows_with_slots(const std::vector<double>& x, int64_t row, const std::vector<int32_t>& slots) {
  std::vector<double> out;
  for (size_t t = 0; t < slots.size(); ++t)
    if (slots[t] >= 0) out.insert(out.end(), x.begin() + int64_t(t) * row, x.begin() + int64_t(t + 1) * row);
  return out;
}

// Against float64. Error budget of the F32 path, relative to the scale
// (|x1| + |x2|) * |factor| of the normalized pair: the normalized values
// carry the F32 sum of squares (head_dim positive terms, a few units of
// 2^-24 once averaged into the root), the inverse root rounded to F32 and
// two products; the rotation adds cos/sin rounded to F32 and three
// roundings (<= 4 * 2^-24). The largest error seen is about 3e-7 of the
// scale; the tolerance is 1e-6.
TEST(RopeWriteKvCacheFused, MatchesFloat64Reference) {
  uint32_t seed = 700;
  for (const Case& c : kNormCases)
    for (bool norm : {false, true})
      for (bool per_token : {false, true}) {
        const Problem p = make_problem(c, ++seed, DType::BF16);
        const float eps = 1e-6f;
        const ops::RopeOptions opts = norm ? ops::RopeOptions{&p.q_norm, &p.k_norm, eps} : ops::RopeOptions{};
        Problem ref = p;  // with one row for everyone when !per_token
        if (!per_token) {
          ref.seq_start = {0, c.n};
          ref.seq_freqs = {p.seq_freqs[0]};
        }
        const Tensor inv_freq = per_token ? p.inv_freq_2d : Tensor::from_floats({c.r}, p.seq_freqs[0]);
        Tensor q = test::nan_tensor({c.n, c.nh, c.hd});
        Tensor kc = test::nan_tensor(p.cache_shape()), vc = test::nan_tensor(p.cache_shape());
        ops::rope_write_kv_cache_fused(p.qkv, p.positions, inv_freq, c.factor, p.slot_mapping, q, kc, vc, opts);

        std::vector<double> want_q, q_scale, want_k, k_scale;
        reference_heads(ref, p.q(), norm ? &p.q_norm : nullptr, eps, want_q, q_scale);
        reference_heads(ref, p.k(), norm ? &p.k_norm : nullptr, eps, want_k, k_scale);
        const int64_t row = c.nkv * c.hd;
        const std::string what = fmt::format("n={} heads={}/{} hd={} r={} norm={} per_token={}", c.n, c.nh, c.nkv, c.hd,
                                             c.r, norm, per_token);
        test::expect_close(q.to_floats(), want_q, q_scale, 1e-6, 0, what + " q");
        test::expect_close(written_rows(kc, p.slots), rows_with_slots(want_k, row, p.slots),
                           rows_with_slots(k_scale, row, p.slots), 1e-6, 0, what + " k_cache");
        const std::vector<double> vd = test::to_doubles(p.v());
        test::expect_close(written_rows(vc, p.slots), rows_with_slots(vd, row, p.slots), 0, 0, what + " v_cache");
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

// The new arguments: inv_freq's two shapes, the norms (both or neither,
// [head_dim], dtype, eps) and their overlap with the outputs; both variants.
TEST(RopeWriteKvCache, RejectsBadNormsAndFrequencies) {
  // Three tokens, 4 query heads over 2 KV heads, head_dim 8, 3 blocks of 4 slots.
  Tensor qkv = f32({3, 8, 8}), q = f32({3, 4, 8}), k = f32({3, 2, 8}), v = f32({3, 2, 8});
  Tensor kc = f32({3, 4, 2, 8}), vc = f32({3, 4, 2, 8});
  Tensor pos = i32({3}, {0, 1, 2}), slots = i32({3}, {5, -1, 11});
  Tensor freq = Tensor::from_floats({4}, {1.0f, 0.1f, 0.01f, 0.001f}), freq2 = f32({3, 4});
  Tensor qn = f32({8}), kn = Tensor::zeros({8}, DType::BF16);
  using test::expect_op_error;
  for (bool fused : {false, true}) {
    const std::string op = fused ? "rope_write_kv_cache_fused" : "rope_write_kv_cache";
    const auto run = [&](const Tensor& freq_, const ops::RopeOptions& o) {
      if (fused)
        ops::rope_write_kv_cache_fused(qkv, pos, freq_, 1.0f, slots, q, kc, vc, o);
      else
        ops::rope_write_kv_cache(q, k, v, pos, freq_, 1.0f, slots, kc, vc, o);
    };
    const ops::RopeOptions norms{&qn, &kn, 1e-6f};
    EXPECT_NO_THROW(run(freq, norms)) << op;
    EXPECT_NO_THROW(run(freq2, norms)) << op;
    EXPECT_NO_THROW(run(f32({3, 0}), {})) << op;  // r = 0: nothing rotated
    const Tensor f16n = Tensor::zeros({8}, DType::F16);
    EXPECT_NO_THROW(run(freq, {&f16n, &f16n, 0.0f})) << op;  // F16 weights, as rms_norm takes on the CPU
    // inv_freq: rows != n_tokens, too many frequencies, 3-D, wrong dtype.
    expect_op_error(op, "inv_freq", [&] { run(f32({2, 4}), {}); });
    expect_op_error(op, "inv_freq", [&] { run(f32({4, 4}), {}); });
    expect_op_error(op, "inv_freq", [&] { run(f32({3, 5}), {}); });
    expect_op_error(op, "inv_freq", [&] { run(f32({3, 1, 4}), {}); });
    expect_op_error(op, "inv_freq", [&] { run(Tensor::zeros({3, 4}, DType::BF16), {}); });
    expect_op_error(op, "inv_freq", [&] { run(f32({3, 8}).slice(1, 0, 4), {}); });  // not contiguous
    // Norms: one without the other.
    expect_op_error(op, "k_norm", [&] { run(freq, {&qn, nullptr, 1e-6f}); });
    expect_op_error(op, "q_norm", [&] { run(freq, {nullptr, &kn, 1e-6f}); });
    // Wrong length, rank, dtype.
    const Tensor n7 = f32({7}), n2d = f32({1, 8}), ni32 = Tensor::zeros({8}, DType::I32);
    expect_op_error(op, "q_norm", [&] { run(freq, {&n7, &kn, 1e-6f}); });
    expect_op_error(op, "k_norm", [&] { run(freq, {&qn, &n7, 1e-6f}); });
    expect_op_error(op, "q_norm", [&] { run(freq, {&n2d, &kn, 1e-6f}); });
    expect_op_error(op, "k_norm", [&] { run(freq, {&qn, &ni32, 1e-6f}); });
    const Tensor undefined;
    expect_op_error(op, "q_norm", [&] { run(freq, {&undefined, &kn, 1e-6f}); });
    // eps: negative, NaN, infinite.
    expect_op_error(op, "norm_eps", [&] { run(freq, {&qn, &kn, -1e-6f}); });
    expect_op_error(op, "norm_eps", [&] { run(freq, {&qn, &kn, NAN}); });
    expect_op_error(op, "norm_eps", [&] { run(freq, {&qn, &kn, INFINITY}); });
    // An output over a norm weight.
    const Tensor in_q = q.reshape({96}).slice(0, 8, 16), in_kc = kc.reshape({192}).slice(0, 0, 8);
    expect_op_error(op, "q", [&] { run(freq, {&in_q, &kn, 1e-6f}); });
    expect_op_error(op, "k_cache", [&] { run(freq, {&qn, &in_kc, 1e-6f}); });
  }
  // A rejected call writes nothing.
  Tensor q3 = test::random_tensor({3, 4, 8}, DType::F32, 11), kc3 = f32({3, 4, 2, 8}), vc3 = f32({3, 4, 2, 8});
  const Tensor q3_before = q3.to(kCpu), n7 = f32({7});
  test::expect_op_error("rope_write_kv_cache", "k_norm", [&] {
    ops::rope_write_kv_cache(q3, k, v, pos, freq, 1.0f, slots, kc3, vc3, {&qn, &n7, 1e-6f});
  });
  EXPECT_TRUE(same_bits(q3, q3_before));
  for (float x : kc3.to_floats()) ASSERT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace kite
