// Paged attention and write_kv_cache at every SIMD level: against a float64
// reference, bitwise against cpu::attention on each sequence's contiguous
// K/V, and their argument checks.
#include "backend/ops/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "backend/ops/attention.h"
#include "backend/ops/write_kv_cache.h"
#include "backend_test_util.h"

namespace kite {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct SeqSpec {
  int64_t n_q, ctx;  // queries this step (the newest tokens) and context length
};

// Where a batch's sequences live in a paged cache: each sequence gets
// ceil(ctx / block_size) distinct blocks drawn at random from a cache with
// `spare` more blocks than needed; table rows are padded with -1.
struct Layout {
  std::vector<SeqSpec> seqs;
  int64_t block_size = 0, num_blocks = 0, width = 0, n_tokens = 0;
  std::vector<std::vector<int32_t>> blocks;  // [n_seqs][blocks used]
  std::vector<int32_t> starts;               // [n_seqs + 1]

  Layout(std::vector<SeqSpec> specs, int64_t bs, std::mt19937& rng, int64_t spare, int64_t pad)
      : seqs(std::move(specs)), block_size(bs) {
    int64_t used = 0, most = 0;
    for (const SeqSpec& s : seqs) {
      used += ceil_div(s.ctx, bs);
      most = std::max(most, ceil_div(s.ctx, bs));
    }
    num_blocks = used + spare;
    width = most + pad;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    size_t next = 0;
    starts.push_back(0);
    for (const SeqSpec& s : seqs) {
      blocks.emplace_back(ids.begin() + long(next), ids.begin() + long(next) + ceil_div(s.ctx, bs));
      next += size_t(ceil_div(s.ctx, bs));
      starts.push_back(int32_t(starts.back() + s.n_q));
    }
    n_tokens = starts.back();
  }
  int64_t n_seqs() const { return int64_t(seqs.size()); }
  // The cache slot of key position p of sequence s.
  int64_t slot(size_t s, int64_t p) const { return blocks[s][size_t(p / block_size)] * block_size + p % block_size; }
  Tensor query_start() const { return test::i32_tensor({n_seqs() + 1}, starts); }
  Tensor context_lens() const {
    std::vector<int32_t> v;
    for (const SeqSpec& s : seqs) v.push_back(int32_t(s.ctx));
    return test::i32_tensor({n_seqs()}, v);
  }
  Tensor block_tables() const {
    std::vector<int32_t> v(size_t(n_seqs() * width), -1);
    for (size_t s = 0; s < blocks.size(); ++s)
      std::copy(blocks[s].begin(), blocks[s].end(), v.begin() + long(s) * width);
    return test::i32_tensor({n_seqs(), width}, v);
  }
};

// A batch: the layout, the queries, each sequence's contiguous K/V and the
// cache holding them; every other cache float (spare blocks, slots past a
// context's end) is NaN, so reading one shows up in the output.
struct PagedBatch {
  Layout layout;
  int64_t n_heads, n_kv_heads, hd;
  Tensor q;                  // [n_tokens, n_heads, hd]
  std::vector<Tensor> k, v;  // per sequence [ctx, n_kv_heads, hd]
  Tensor k_cache, v_cache;   // [num_blocks, block_size, n_kv_heads, hd]
  Tensor query_start, context_lens, block_tables;

  Tensor q_of(size_t s) const { return q.slice(0, layout.starts[s], layout.starts[s + 1]); }
  int64_t q_start_of(size_t s) const { return layout.seqs[s].ctx - layout.seqs[s].n_q; }
};

Tensor nan_cache(const Layout& l, int64_t nkv, int64_t hd) {
  return test::nan_tensor({l.num_blocks, l.block_size, nkv, hd});
}

// Copies rows [0, ctx) of each sequence's K/V into its cache slots.
void scatter(const Layout& l, const std::vector<Tensor>& rows, Tensor& cache) {
  float* dst = cache.data_as<float>();
  for (size_t s = 0; s < rows.size(); ++s) {
    const int64_t row = rows[s].dim(1) * rows[s].dim(2);
    for (int64_t p = 0; p < l.seqs[s].ctx; ++p)
      std::memcpy(dst + l.slot(s, p) * row, rows[s].data_as<const float>() + p * row, size_t(row) * sizeof(float));
  }
}

PagedBatch make_batch(std::vector<SeqSpec> seqs, int64_t bs, int64_t nh, int64_t nkv, int64_t hd, uint32_t seed,
                      bool fill_cache = true) {
  std::mt19937 rng(seed);
  PagedBatch b{Layout(std::move(seqs), bs, rng, 3, 2), nh, nkv, hd, {}, {}, {}, {}, {}, {}, {}, {}};
  const Layout& l = b.layout;
  b.q = test::random_tensor({l.n_tokens, nh, hd}, DType::F32, seed + 1, -2.0f, 2.0f);
  for (size_t s = 0; s < l.seqs.size(); ++s) {
    b.k.push_back(test::random_tensor({l.seqs[s].ctx, nkv, hd}, DType::F32, seed + 2 + 2 * uint32_t(s), -2.0f, 2.0f));
    b.v.push_back(test::random_tensor({l.seqs[s].ctx, nkv, hd}, DType::F32, seed + 3 + 2 * uint32_t(s)));
  }
  b.k_cache = nan_cache(l, nkv, hd);
  b.v_cache = nan_cache(l, nkv, hd);
  if (fill_cache) {
    scatter(l, b.k, b.k_cache);
    scatter(l, b.v, b.v_cache);
  }
  b.query_start = l.query_start();
  b.context_lens = l.context_lens();
  b.block_tables = l.block_tables();
  return b;
}

// A mix of what a batching engine schedules in one step, in random order.
std::vector<SeqSpec> mixed_seqs(std::mt19937& rng, int64_t bs) {
  const auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t prefill = uni(2, 40), chunk = uni(2, 24);
  std::vector<SeqSpec> seqs = {
      {1, uni(2, 300)},              // decode after a long context
      {1, 1},                        // the first token's decode
      {1, bs * uni(1, 4)},           // decode ending exactly on a block boundary
      {prefill, prefill},            // a fresh prefill
      {chunk, chunk + uni(1, 280)},  // a prefill chunk after cached context
      {0, uni(0, 50)},               // a sequence without queries this step
  };
  std::shuffle(seqs.begin(), seqs.end(), rng);
  return seqs;
}

std::string case_name(const PagedBatch& b) {
  std::string seqs;
  for (const SeqSpec& s : b.layout.seqs) seqs += fmt::format("{}{}/{}", seqs.empty() ? "" : " ", s.n_q, s.ctx);
  return fmt::format("block_size={} heads={}/{} hd={} seqs(n_q/ctx)=[{}]", b.layout.block_size, b.n_heads, b.n_kv_heads,
                     b.hd, seqs);
}

// Rows [begin, end) of out must equal cpu::attention on sequence s's
// contiguous K/V at `level`, bit for bit.
void expect_bitwise_contiguous(const PagedBatch& b, const Tensor& out, float scale, cpu::SimdLevel level,
                               const std::string& what) {
  for (size_t s = 0; s < b.layout.seqs.size(); ++s) {
    if (b.layout.seqs[s].n_q == 0) continue;
    Tensor want = test::nan_tensor({b.layout.seqs[s].n_q, b.n_heads, b.hd});
    cpu::attention(b.q_of(s), b.k[s], b.v[s], b.q_start_of(s), scale, want, level);
    EXPECT_EQ(out.slice(0, b.layout.starts[s], b.layout.starts[s + 1]).to_floats(), want.to_floats())
        << what << " sequence " << s;
  }
}

TEST(PagedAttention, MatchesFloat64ReferenceAndContiguousAttentionAtEverySimdLevel) {
  struct Heads {
    int64_t n_heads, n_kv_heads, hd;
  };
  const std::vector<Heads> heads = {{6, 2, 64}, {4, 4, 128}, {8, 2, 17}, {3, 1, 33}, {6, 3, 80}};
  uint32_t seed = 7000;
  for (int64_t bs : {1, 5, 16})
    for (const Heads& hh : heads) {
      seed += 100;
      std::mt19937 rng(seed);
      const PagedBatch b = make_batch(mixed_seqs(rng, bs), bs, hh.n_heads, hh.n_kv_heads, hh.hd, seed);
      const float scale = 1.0f / std::sqrt(float(hh.hd));
      const std::string name = case_name(b);
      // The float64 reference, sequence by sequence on contiguous K/V.
      std::vector<double> want, err_scale;
      for (size_t s = 0; s < b.layout.seqs.size(); ++s) {
        if (b.layout.seqs[s].n_q == 0) continue;
        std::vector<double> w, e;
        test::reference_attention(b.q_of(s), b.k[s], b.v[s], b.q_start_of(s), scale, w, e);
        want.insert(want.end(), w.begin(), w.end());
        err_scale.insert(err_scale.end(), e.begin(), e.end());
      }
      for (cpu::SimdLevel level : test::simd_levels()) {
        const std::string what = name + " simd=" + cpu::simd_name(level);
        Tensor out = test::nan_tensor({b.layout.n_tokens, hh.n_heads, hh.hd});
        cpu::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale, 0, out,
                             level);
        test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, what);
        expect_bitwise_contiguous(b, out, scale, level, what);
      }
      Tensor out = Tensor::empty({b.layout.n_tokens, hh.n_heads, hh.hd}, DType::F32);
      ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale, out);
      test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, name + " via ops");
      expect_bitwise_contiguous(b, out, scale, cpu::simd_level(), name + " via ops");
    }
}

TEST(PagedAttention, ReadingAnUnusedBlockShowsUp) {
  // The NaN poison works: pointing one block of a sequence at a spare block
  // turns exactly that sequence's outputs into NaN.
  const PagedBatch b = make_batch({{3, 40}, {1, 23}, {5, 5}}, 5, 4, 2, 16, 91);
  std::vector<int32_t> used;
  for (const auto& blocks : b.layout.blocks) used.insert(used.end(), blocks.begin(), blocks.end());
  int32_t spare = 0;
  while (std::find(used.begin(), used.end(), spare) != used.end()) ++spare;
  Tensor tables = b.layout.block_tables();
  tables.data_as<int32_t>()[b.layout.width + 2] = spare;  // sequence 1, its third block
  Tensor out = Tensor::empty({b.layout.n_tokens, 4, 16}, DType::F32);
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, tables, 0.25f, out);
  const std::vector<float> f = out.to_floats();
  for (int64_t t = 0; t < b.layout.n_tokens; ++t) {
    const bool in_seq1 = t >= b.layout.starts[1] && t < b.layout.starts[2];
    for (int64_t e = 0; e < 4 * 16; ++e) EXPECT_EQ(std::isnan(f[size_t(t * 64 + e)]), in_seq1) << "token " << t;
  }
}

TEST(PagedAttention, DecodeStepsEqualOnePrefill) {
  // Queries of one prefill equal single-query decode steps over growing
  // contexts of the same cache, bit for bit.
  const int64_t n = 23, nh = 6, nkv = 2, hd = 64;
  const PagedBatch b = make_batch({{n, n}}, 4, nh, nkv, hd, 123);
  Tensor full = Tensor::empty({n, nh, hd}, DType::F32);
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, 0.125f, full);
  for (int64_t i = 0; i < n; ++i) {
    Tensor one = Tensor::empty({1, nh, hd}, DType::F32);
    ops::paged_attention(b.q.slice(0, i, i + 1), b.k_cache, b.v_cache, test::i32_tensor({2}, {0, 1}),
                         test::i32_tensor({1}, {int32_t(i + 1)}), b.block_tables, 0.125f, one);
    EXPECT_EQ(one.to_floats(), full.slice(0, i, i + 1).to_floats()) << "query " << i;
  }
}

// ---- sliding window ----------------------------------------------------------

// The first key position the query at position pos sees with window w.
int64_t first_visible(int64_t pos, int64_t w) { return w > 0 ? std::max<int64_t>(0, pos - w + 1) : 0; }

// The float64 reference with a window, sequence by sequence.
void window_reference(const PagedBatch& b, float scale, int64_t window, std::vector<double>& want,
                      std::vector<double>& err_scale) {
  want.clear();
  err_scale.clear();
  for (size_t s = 0; s < b.layout.seqs.size(); ++s) {
    if (b.layout.seqs[s].n_q == 0) continue;
    std::vector<double> w, e;
    test::reference_attention(b.q_of(s), b.k[s], b.v[s], b.q_start_of(s), scale, w, e, window);
    want.insert(want.end(), w.begin(), w.end());
    err_scale.insert(err_scale.end(), e.begin(), e.end());
  }
}

// Each query row of out must equal cpu::attention over exactly its window's
// keys (contiguous), bit for bit: the same keys in the same order.
void expect_bitwise_window(const PagedBatch& b, const Tensor& out, float scale, int64_t window, cpu::SimdLevel level,
                           const std::string& what) {
  for (size_t s = 0; s < b.layout.seqs.size(); ++s)
    for (int64_t i = 0; i < b.layout.seqs[s].n_q; ++i) {
      const int64_t pos = b.q_start_of(s) + i, first = first_visible(pos, window), t = b.layout.starts[s] + i;
      Tensor want = test::nan_tensor({1, b.n_heads, b.hd});
      cpu::attention(b.q.slice(0, t, t + 1), b.k[s].slice(0, first, pos + 1), b.v[s].slice(0, first, pos + 1),
                     pos - first, scale, want, level);
      EXPECT_EQ(out.slice(0, t, t + 1).to_floats(), want.to_floats()) << what << " sequence " << s << " query " << i;
    }
}

TEST(PagedAttention, SlidingWindowMatchesFloat64Reference) {
  struct Heads {
    int64_t n_heads, n_kv_heads, hd;
  };
  const std::vector<Heads> heads = {{6, 2, 64}, {4, 4, 128}, {3, 1, 33}};
  uint32_t seed = 9100;
  for (int64_t bs : {1, 5, 16})
    for (const Heads& hh : heads) {
      seed += 100;
      std::mt19937 rng(seed);
      const PagedBatch b = make_batch(mixed_seqs(rng, bs), bs, hh.n_heads, hh.n_kv_heads, hh.hd, seed);
      const float scale = 1.0f / std::sqrt(float(hh.hd));
      int64_t max_ctx = 0, some_ctx = 0;
      for (const SeqSpec& sp : b.layout.seqs) {
        max_ctx = std::max(max_ctx, sp.ctx);
        if (sp.n_q > 0 && sp.ctx > 1) some_ctx = sp.ctx;
      }
      // Windows of one key, smaller than most contexts, a block, equal to a
      // context (and to the longest), and longer than every context.
      for (int64_t window : {int64_t(1), int64_t(2), int64_t(7), bs, int64_t(37), some_ctx, max_ctx, max_ctx + 9}) {
        const std::string name = fmt::format("{} window={}", case_name(b), window);
        std::vector<double> want, err_scale;
        window_reference(b, scale, window, want, err_scale);
        for (cpu::SimdLevel level : test::simd_levels()) {
          const std::string what = name + " simd=" + cpu::simd_name(level);
          Tensor out = test::nan_tensor({b.layout.n_tokens, hh.n_heads, hh.hd});
          cpu::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale, window,
                               out, level);
          test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, what);
          expect_bitwise_window(b, out, scale, window, level, what);
        }
        Tensor out = test::nan_tensor({b.layout.n_tokens, hh.n_heads, hh.hd});
        ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale,
                             ops::PagedAttentionHints{}, window, out);
        test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, name + " via ops");
        expect_bitwise_window(b, out, scale, window, cpu::simd_level(), name + " via ops");
      }
    }
}

TEST(PagedAttention, SlidingWindowCoveringTheContextIsNoWindow) {
  // Window 0, and any window at least as long as every context, give the
  // default overloads' result bit for bit.
  std::mt19937 rng(9500);
  const PagedBatch b = make_batch(mixed_seqs(rng, 5), 5, 6, 2, 64, 9501);
  const float scale = 0.125f;
  const int64_t n = b.layout.n_tokens;
  Tensor base = test::nan_tensor({n, 6, 64});
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale, base);
  int64_t max_ctx = 0;
  for (const SeqSpec& sp : b.layout.seqs) max_ctx = std::max(max_ctx, sp.ctx);
  for (int64_t window : {int64_t(0), max_ctx, max_ctx + 1, int64_t(1) << 40}) {
    Tensor out = test::nan_tensor({n, 6, 64});
    ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale,
                         ops::PagedAttentionHints{}, window, out);
    EXPECT_EQ(out.to_floats(), base.to_floats()) << "window " << window;
  }
  Tensor out = test::nan_tensor({n, 6, 64});
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale,
                       ops::PagedAttentionHints{}, out);
  EXPECT_EQ(out.to_floats(), base.to_floats()) << "hints overload";
}

TEST(PagedAttention, SlidingWindowNeverReadsKeysBeforeTheWindow) {
  // Every cache row before a sequence's first query's window is set to NaN:
  // the output is still exactly the unpoisoned one.
  for (int64_t bs : {1, 5, 16}) {
    std::mt19937 rng(uint32_t(9600 + bs));
    const PagedBatch b = make_batch(mixed_seqs(rng, bs), bs, 4, 2, 32, uint32_t(9700 + bs));
    const float scale = 0.2f;
    const int64_t n = b.layout.n_tokens, row = 2 * 32;
    for (int64_t window : {1, 3, 16, 50}) {
      Tensor clean = test::nan_tensor({n, 4, 32});
      ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, scale,
                           ops::PagedAttentionHints{}, window, clean);
      Tensor kc = b.k_cache.to(kCpu), vc = b.v_cache.to(kCpu);
      int64_t poisoned = 0;
      for (size_t s = 0; s < b.layout.seqs.size(); ++s) {
        if (b.layout.seqs[s].n_q == 0) continue;
        for (int64_t p = 0; p < first_visible(b.q_start_of(s), window); ++p, ++poisoned) {
          std::fill_n(kc.data_as<float>() + b.layout.slot(s, p) * row, row, NAN);
          std::fill_n(vc.data_as<float>() + b.layout.slot(s, p) * row, row, NAN);
        }
      }
      EXPECT_GT(poisoned, 0) << "block_size " << bs << " window " << window;
      Tensor out = test::nan_tensor({n, 4, 32});
      ops::paged_attention(b.q, kc, vc, b.query_start, b.context_lens, b.block_tables, scale,
                           ops::PagedAttentionHints{}, window, out);
      EXPECT_EQ(out.to_floats(), clean.to_floats()) << "block_size " << bs << " window " << window;
    }
  }
}

TEST(PagedAttention, SlidingWindowDecodeStepsEqualOnePrefill) {
  // With a window too, the queries of one prefill equal single-query decode
  // steps over growing contexts, bit for bit.
  const int64_t n = 41, nh = 6, nkv = 2, hd = 64, window = 9;
  const PagedBatch b = make_batch({{n, n}}, 4, nh, nkv, hd, 321);
  Tensor full = test::nan_tensor({n, nh, hd});
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, 0.125f,
                       ops::PagedAttentionHints{}, window, full);
  for (int64_t i = 0; i < n; ++i) {
    Tensor one = test::nan_tensor({1, nh, hd});
    ops::paged_attention(b.q.slice(0, i, i + 1), b.k_cache, b.v_cache, test::i32_tensor({2}, {0, 1}),
                         test::i32_tensor({1}, {int32_t(i + 1)}), b.block_tables, 0.125f, ops::PagedAttentionHints{},
                         window, one);
    EXPECT_EQ(one.to_floats(), full.slice(0, i, i + 1).to_floats()) << "query " << i;
  }
}

TEST(WriteKvCache, RoundTripThenPagedAttentionEqualsContiguous) {
  for (int64_t bs : {1, 5, 16}) {
    std::mt19937 rng(uint32_t(300 + bs));
    const int64_t nh = 6, nkv = 3, hd = 40;
    PagedBatch b = make_batch(mixed_seqs(rng, bs), bs, nh, nkv, hd, uint32_t(400 + bs), false);
    const Layout& l = b.layout;
    const int64_t row = nkv * hd;
    // Two writes as an engine does them: the cached context of every
    // sequence, then the step's new tokens; -1 padding rows (holding values
    // that must not land anywhere) are mixed in.
    for (int pass = 0; pass < 2; ++pass) {
      std::vector<int32_t> slots;
      std::vector<float> kr, vr;
      const auto pad = [&] {
        slots.push_back(-1);
        kr.insert(kr.end(), size_t(row), 1e9f);
        vr.insert(vr.end(), size_t(row), -1e9f);
      };
      pad();
      for (size_t s = 0; s < l.seqs.size(); ++s) {
        const int64_t first_new = l.seqs[s].ctx - l.seqs[s].n_q;
        const int64_t lo = pass == 0 ? 0 : first_new, hi = pass == 0 ? first_new : l.seqs[s].ctx;
        const float* ks = b.k[s].data_as<const float>();
        const float* vs = b.v[s].data_as<const float>();
        for (int64_t p = lo; p < hi; ++p) {
          slots.push_back(int32_t(l.slot(s, p)));
          kr.insert(kr.end(), ks + p * row, ks + (p + 1) * row);
          vr.insert(vr.end(), vs + p * row, vs + (p + 1) * row);
        }
        if (s == 1) pad();
      }
      const int64_t n = int64_t(slots.size());
      ops::write_kv_cache(Tensor::from_floats({n, nkv, hd}, kr), Tensor::from_floats({n, nkv, hd}, vr),
                          test::i32_tensor({n}, slots), b.k_cache, b.v_cache);
    }
    // Every context row landed in its slot exactly; nothing else was written.
    const std::vector<float> kc = b.k_cache.to_floats(), vc = b.v_cache.to_floats();
    Tensor want_k = nan_cache(l, nkv, hd), want_v = nan_cache(l, nkv, hd);
    scatter(l, b.k, want_k);
    scatter(l, b.v, want_v);
    const std::vector<float> wk = want_k.to_floats(), wv = want_v.to_floats();
    size_t bad = 0;
    for (size_t i = 0; i < kc.size(); ++i) {
      const bool k_ok = std::isnan(wk[i]) ? std::isnan(kc[i]) : kc[i] == wk[i];
      const bool v_ok = std::isnan(wv[i]) ? std::isnan(vc[i]) : vc[i] == wv[i];
      bad += !k_ok + !v_ok;
    }
    EXPECT_EQ(bad, 0u) << "block_size " << bs;
    for (cpu::SimdLevel level : test::simd_levels()) {
      Tensor out = test::nan_tensor({l.n_tokens, nh, hd});
      cpu::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, 0.2f, 0, out,
                           level);
      expect_bitwise_contiguous(b, out, 0.2f, level, case_name(b) + " simd=" + cpu::simd_name(level));
    }
  }
}

TEST(PagedAttention, VecPrimitivesDoNotDependOnHowRowsAreSplit) {
  // What makes paged attention bitwise equal to contiguous attention: scores
  // from dot_rows, and weighted sums from weighted_rows_acc, are the same
  // whether the rows come in one call or in spans of any length.
  const int64_t rows = 23, stride = 150;
  const std::vector<float> q = test::random_tensor({stride}, DType::F32, 1).to_floats();
  const std::vector<float> m = test::random_tensor({rows, stride}, DType::F32, 2).to_floats();
  const std::vector<float> p = test::random_tensor({rows}, DType::F32, 3, 0.0f, 1.0f).to_floats();
  for (cpu::SimdLevel level : test::simd_levels()) {
    const cpu::VecOps& ops = cpu::vec_ops(level);
    for (int64_t n : {1, 7, 8, 17, 33, 64, 80, 128, 131}) {
      std::vector<float> whole(static_cast<size_t>(rows)), whole_out(static_cast<size_t>(n));
      ops.dot_rows(q.data(), m.data(), stride, rows, n, whole.data());
      ops.weighted_rows(p.data(), m.data(), stride, rows, n, whole_out.data());
      for (int64_t span : {1, 2, 3, 5, 16}) {
        std::vector<float> split(static_cast<size_t>(rows)), split_out(static_cast<size_t>(n), 0.0f);
        for (int64_t j = 0; j < rows; j += span) {
          const int64_t r = std::min(span, rows - j);
          ops.dot_rows(q.data(), m.data() + j * stride, stride, r, n, split.data() + j);
          ops.weighted_rows_acc(p.data() + j, m.data() + j * stride, stride, r, n, split_out.data());
        }
        const std::string what = fmt::format("simd={} n={} span={}", cpu::simd_name(level), n, span);
        EXPECT_EQ(split, whole) << what;
        EXPECT_EQ(split_out, whole_out) << what;
      }
    }
  }
}

Tensor f32(const Shape& s) { return Tensor::zeros(s, DType::F32); }
Tensor i32(const Shape& s, const std::vector<int32_t>& v) { return test::i32_tensor(s, v); }
using test::expect_op_error;

TEST(PagedAttention, RejectsBadArguments) {
  // Two sequences: 2 queries over 7 keys and 1 query over 3 keys; block_size 4.
  Tensor q = f32({3, 6, 8}), kc = f32({5, 4, 2, 8}), vc = f32({5, 4, 2, 8}), out = f32({3, 6, 8});
  Tensor qs = i32({3}, {0, 2, 3}), cl = i32({2}, {7, 3}), bt = i32({2, 3}, {4, 0, -1, 2, -1, -1});
  const auto run = [&](const Tensor& q_, const Tensor& kc_, const Tensor& vc_, const Tensor& qs_, const Tensor& cl_,
                       const Tensor& bt_, float scale,
                       Tensor& out_) { ops::paged_attention(q_, kc_, vc_, qs_, cl_, bt_, scale, out_); };
  const std::string op = "paged_attention";
  EXPECT_NO_THROW(run(q, kc, vc, qs, cl, bt, 0.5f, out));
  // An empty step (no queries at all) is fine.
  Tensor empty_out = f32({0, 6, 8});
  EXPECT_NO_THROW(run(f32({0, 6, 8}), kc, vc, i32({2}, {0, 0}), i32({1}, {0}), i32({1, 1}, {-1}), 0.5f, empty_out));

  expect_op_error(op, "q", [&] { run(Tensor::zeros({3, 6, 8}, DType::BF16), kc, vc, qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "q", [&] { run(f32({3, 48}), kc, vc, qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "k_cache", [&] { run(q, f32({5, 4, 16}), vc, qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "k_cache", [&] { run(q, f32({5, 4, 2, 9}), vc, qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "k_cache", [&] { run(q, f32({5, 4, 4, 8}), f32({5, 4, 4, 8}), qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "k_cache", [&] { run(q, f32({5, 0, 2, 8}), f32({5, 0, 2, 8}), qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "v_cache", [&] { run(q, kc, f32({4, 4, 2, 8}), qs, cl, bt, 0.5f, out); });
  expect_op_error(op, "v_cache", [&] { run(q, kc, Tensor::zeros({5, 4, 2, 8}, DType::F16), qs, cl, bt, 0.5f, out); });
  // query_start: dtype, rank, first entry, order, last entry.
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, Tensor::zeros({3}, DType::I64), cl, bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({1, 3}, {0, 2, 3}), cl, bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({0}, {}), i32({0}, {}), bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({3}, {1, 2, 3}), cl, bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({3}, {0, 4, 3}), cl, bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({3}, {0, 2, 2}), cl, bt, 0.5f, out); });
  expect_op_error(op, "query_start", [&] { run(q, kc, vc, i32({3}, {0, 2, 4}), cl, bt, 0.5f, out); });
  // context_lens: dtype, length, fewer keys than queries (or negative).
  expect_op_error(op, "context_lens", [&] { run(q, kc, vc, qs, f32({2}), bt, 0.5f, out); });
  expect_op_error(op, "context_lens", [&] { run(q, kc, vc, qs, i32({3}, {7, 3, 1}), bt, 0.5f, out); });
  expect_op_error(op, "context_lens", [&] { run(q, kc, vc, qs, i32({2}, {1, 3}), bt, 0.5f, out); });
  expect_op_error(op, "context_lens", [&] { run(q, kc, vc, qs, i32({2}, {7, -1}), bt, 0.5f, out); });
  // block_tables: dtype, rows, too narrow, ids out of range or -1 within a context.
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, Tensor::zeros({2, 3}, DType::I64), 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, i32({1, 3}, {4, 0, -1}), 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, i32({2, 1}, {4, 2}), 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, i32({2}, {7, 13}), bt, 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, i32({2, 3}, {4, 5, -1, 2, -1, -1}), 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, i32({2, 3}, {4, -1, -1, 2, -1, -1}), 0.5f, out); });
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, qs, cl, i32({2, 3}, {4, 0, -1, -7, -1, -1}), 0.5f, out); });
  // Ids past a context's last block are ignored, whatever they hold.
  EXPECT_NO_THROW(run(q, kc, vc, qs, cl, i32({2, 3}, {4, 0, 99, 2, -5, 1000}), 0.5f, out));
  expect_op_error(op, "scale", [&] { run(q, kc, vc, qs, cl, bt, NAN, out); });
  expect_op_error(op, "scale", [&] { run(q, kc, vc, qs, cl, bt, INFINITY, out); });
  // sliding_window: 0 (none) and any W >= 1 are fine, negative is refused.
  for (int64_t w : {0, 1, 3, 100})
    EXPECT_NO_THROW(ops::paged_attention(q, kc, vc, qs, cl, bt, 0.5f, ops::PagedAttentionHints{}, w, out));
  for (int64_t w : {int64_t(-1), int64_t(-100), std::numeric_limits<int64_t>::min()})
    expect_op_error(op, "sliding_window",
                    [&] { ops::paged_attention(q, kc, vc, qs, cl, bt, 0.5f, ops::PagedAttentionHints{}, w, out); });
  expect_op_error(op, "out", [&] {
    Tensor o = f32({3, 6, 9});
    run(q, kc, vc, qs, cl, bt, 0.5f, o);
  });
  expect_op_error(op, "out", [&] { run(q, kc, vc, qs, cl, bt, 0.5f, q); });
  expect_op_error(op, "out", [&] {
    Tensor o = kc.reshape({-1}).slice(0, 0, 3 * 6 * 8).reshape({3, 6, 8});
    run(q, kc, vc, qs, cl, bt, 0.5f, o);
  });
}

TEST(WriteKvCache, RejectsBadArguments) {
  // Three rows into a cache of 3 blocks of 4 slots (12 slots).
  Tensor k = f32({3, 2, 8}), v = f32({3, 2, 8}), kc = f32({3, 4, 2, 8}), vc = f32({3, 4, 2, 8});
  Tensor slots = i32({3}, {5, -1, 11});
  const std::string op = "write_kv_cache";
  EXPECT_NO_THROW(ops::write_kv_cache(k, v, slots, kc, vc));
  EXPECT_NO_THROW(ops::write_kv_cache(k, v, i32({3}, {-1, -1, -1}), kc, vc));
  expect_op_error(op, "k", [&] { ops::write_kv_cache(Tensor::zeros({3, 2, 8}, DType::BF16), v, slots, kc, vc); });
  expect_op_error(op, "k", [&] { ops::write_kv_cache(f32({3, 16}), v, slots, kc, vc); });
  expect_op_error(op, "v", [&] { ops::write_kv_cache(k, f32({3, 2, 7}), slots, kc, vc); });
  expect_op_error(op, "v", [&] { ops::write_kv_cache(k, f32({2, 2, 8}), slots, kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { ops::write_kv_cache(k, v, Tensor::zeros({3}, DType::I64), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { ops::write_kv_cache(k, v, i32({2}, {0, 1}), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { ops::write_kv_cache(k, v, i32({3}, {0, 12, 1}), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { ops::write_kv_cache(k, v, i32({3}, {0, -2, 1}), kc, vc); });
  expect_op_error(op, "slot_mapping", [&] { ops::write_kv_cache(k, v, i32({3}, {7, 1, 7}), kc, vc); });
  expect_op_error(op, "k_cache", [&] {
    Tensor c = f32({3, 4, 3, 8});
    ops::write_kv_cache(k, v, slots, c, vc);
  });
  expect_op_error(op, "k_cache", [&] {
    Tensor c = f32({3, 4, 2, 9});
    ops::write_kv_cache(k, v, slots, c, vc);
  });
  expect_op_error(op, "k_cache", [&] {
    Tensor c = f32({12, 2, 8});
    ops::write_kv_cache(k, v, slots, c, vc);
  });
  expect_op_error(op, "v_cache", [&] {
    Tensor c = f32({2, 4, 2, 8});
    ops::write_kv_cache(k, v, slots, kc, c);
  });
  expect_op_error(op, "v_cache", [&] { ops::write_kv_cache(k, v, slots, kc, kc); });
  expect_op_error(op, "k_cache", [&] {
    // A cache view over k's memory.
    Tensor big = f32({2, 3, 2, 8});
    Tensor kk = big.reshape({6, 2, 8}).slice(0, 0, 3), c = big.reshape({2, 3, 2, 8}), c2 = f32({2, 3, 2, 8});
    ops::write_kv_cache(kk, v, i32({3}, {0, 1, 2}), c, c2);
  });
}

}  // namespace
}  // namespace kite
