// CUDA paged attention, write_kv_cache and rope_write_kv_cache (BF16)
// against the CPU ops (F32) on the same BF16-rounded inputs. Run on the GPU
// machine (scripts/device/run.sh); without a CUDA device they are skipped.
//
// Tolerance of paged attention. The inputs are BF16 values held exactly in
// F32 on the CPU side, so the CPU result is the exact attention up to F32
// rounding (~1e-6 relative). The GPU computes scores, softmax and sums in
// F32 too; it rounds at two places only: the probabilities p_j enter the
// P·V product as BF16 (relative error <= 2^-9 each, so the row's error is
// <= 2^-9 * sum_j p_j |v_j|), and the output is stored as BF16 (<= 2^-9 |out|).
// So |gpu - cpu| <= 2^-9 (|out| + sum_j p_j |v_j|) + ~1e-6, and the tests
// allow twice that: 2^-8 (|out| + sum_j p_j |v_j|) + 1e-5, with
// sum_j p_j |v_j| computed exactly by running the CPU op on |V|.
//
// Every cache slot that is not part of a context holds NaN (the unused blocks
// between and after the used ones, the tail of each last block), so a kernel
// that reads one shows it in the output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "backend/ops/paged_attention.h"
#include "backend/ops/rms_norm.h"
#include "backend/ops/rope.h"
#include "backend/ops/rope_write_kv_cache.h"
#include "backend/ops/write_kv_cache.h"
#include "backend_test_util.h"

namespace kite {
namespace {

const Device kGpu{DeviceKind::CUDA, 0};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

struct SeqSpec {
  int64_t n_q, ctx;  // queries this step (the newest tokens) and context length
};

// A batch in a paged cache, on the CPU in F32 with every value BF16-exact.
// Each sequence gets ceil(ctx / bs) blocks drawn at random from a cache with
// spare blocks mixed in (holes); table rows are padded with -1.
struct Batch {
  std::vector<SeqSpec> seqs;
  int64_t bs = 0, nh = 0, nkv = 0, hd = 0;
  int64_t n_tokens = 0, num_blocks = 0, width = 0, max_q = 0, max_ctx = 0;
  std::vector<std::vector<int32_t>> blocks;  // [n_seqs][blocks used]
  std::vector<int32_t> starts, lens, table;
  Tensor q;                 // [n_tokens, nh, hd]
  Tensor k_cache, v_cache;  // [num_blocks, bs, nkv, hd], NaN outside the contexts

  int64_t n_seqs() const { return int64_t(seqs.size()); }
  int64_t slot(size_t s, int64_t p) const { return blocks[s][size_t(p / bs)] * bs + p % bs; }
  Tensor query_start() const { return test::i32_tensor({n_seqs() + 1}, starts); }
  Tensor context_lens() const { return test::i32_tensor({n_seqs()}, lens); }
  Tensor block_tables() const { return test::i32_tensor({n_seqs(), width}, table); }
  std::string name() const {
    std::string s;
    for (size_t i = 0; i < seqs.size() && i < 6; ++i)
      s += fmt::format("{}{}/{}", i ? " " : "", seqs[i].n_q, seqs[i].ctx);
    if (seqs.size() > 6) s += fmt::format(" ... ({} seqs)", seqs.size());
    return fmt::format("bs={} heads={}/{} hd={} seqs(n_q/ctx)=[{}]", bs, nh, nkv, hd, s);
  }
};

void fill_uniform(float* p, int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  for (int64_t i = 0; i < n; ++i) p[i] = round_bf16(d(rng));
}

Batch make_batch(std::vector<SeqSpec> seqs, int64_t bs, int64_t nh, int64_t nkv, int64_t hd, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  b.seqs = std::move(seqs);
  b.bs = bs, b.nh = nh, b.nkv = nkv, b.hd = hd;
  int64_t used = 0, most = 0;
  for (const SeqSpec& s : b.seqs) {
    used += ceil_div(s.ctx, bs);
    most = std::max(most, ceil_div(s.ctx, bs));
    b.max_q = std::max(b.max_q, s.n_q);
    b.max_ctx = std::max(b.max_ctx, s.ctx);
  }
  b.num_blocks = used + used / 4 + 3;
  b.width = most + 3;
  std::vector<int32_t> ids(static_cast<size_t>(b.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  b.starts.push_back(0);
  b.table.assign(size_t(b.n_seqs() * b.width), -1);
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const int64_t n = ceil_div(b.seqs[s].ctx, bs);
    b.blocks.emplace_back(ids.begin() + long(next), ids.begin() + long(next + size_t(n)));
    std::copy(b.blocks.back().begin(), b.blocks.back().end(), b.table.begin() + long(s) * b.width);
    next += size_t(n);
    b.starts.push_back(int32_t(b.starts.back() + b.seqs[s].n_q));
    b.lens.push_back(int32_t(b.seqs[s].ctx));
  }
  b.n_tokens = b.starts.back();
  b.q = Tensor::empty({b.n_tokens, nh, hd}, DType::F32);
  fill_uniform(b.q.data_as<float>(), b.q.numel(), rng, -2.0f, 2.0f);
  b.k_cache = test::nan_tensor({b.num_blocks, bs, nkv, hd});
  b.v_cache = test::nan_tensor({b.num_blocks, bs, nkv, hd});
  const int64_t row = nkv * hd;
  for (size_t s = 0; s < b.seqs.size(); ++s)
    for (int64_t p = 0; p < b.seqs[s].ctx; ++p) {
      fill_uniform(b.k_cache.data_as<float>() + b.slot(s, p) * row, row, rng, -2.0f, 2.0f);
      fill_uniform(b.v_cache.data_as<float>() + b.slot(s, p) * row, row, rng, -1.0f, 1.0f);
    }
  return b;
}

// The batch on the GPU: BF16 data, I32 indices.
struct GpuBatch {
  Tensor q, k_cache, v_cache, query_start, context_lens, block_tables;
  explicit GpuBatch(const Batch& b)
      : q(b.q.to_dtype(DType::BF16).to(kGpu)),
        k_cache(b.k_cache.to_dtype(DType::BF16).to(kGpu)),
        v_cache(b.v_cache.to_dtype(DType::BF16).to(kGpu)),
        query_start(b.query_start().to(kGpu)),
        context_lens(b.context_lens().to(kGpu)),
        block_tables(b.block_tables().to(kGpu)) {}
};

ops::PagedAttentionHints exact_hints(const Batch& b, int64_t splits) {
  ops::PagedAttentionHints h;
  h.max_query_len = b.max_q;
  h.max_context_len = b.max_ctx;
  h.kv_splits = splits;
  return h;
}

// window: the sliding window (0: none).
std::vector<float> gpu_attention(const GpuBatch& g, float scale, const ops::PagedAttentionHints& hints,
                                 int64_t window = 0) {
  Tensor out = Tensor::empty(g.q.shape(), DType::BF16, kGpu);
  ops::paged_attention(g.q, g.k_cache, g.v_cache, g.query_start, g.context_lens, g.block_tables, scale, hints, window,
                       out);
  return out.to_floats();
}

// The CPU op's output and, per element, sum_j p_j |v_j| (the CPU op on |V|).
struct Expected {
  std::vector<float> out, abs_sum;
};

Expected cpu_expected(const Batch& b, float scale, int64_t window = 0) {
  Expected e;
  Tensor out = Tensor::empty({b.n_tokens, b.nh, b.hd}, DType::F32);
  ops::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start(), b.context_lens(), b.block_tables(), scale,
                       ops::PagedAttentionHints{}, window, out);
  e.out = out.to_floats();
  Tensor v_abs = b.v_cache.to(kCpu);
  for (int64_t i = 0; i < v_abs.numel(); ++i) v_abs.data_as<float>()[i] = std::fabs(v_abs.data_as<float>()[i]);
  ops::paged_attention(b.q, b.k_cache, v_abs, b.query_start(), b.context_lens(), b.block_tables(), scale,
                       ops::PagedAttentionHints{}, window, out);
  e.abs_sum = out.to_floats();
  return e;
}

double tolerance(const Expected& want, size_t i) {
  return std::ldexp(1.0, -8) * (std::fabs(double(want.out[i])) + double(want.abs_sum[i])) + 1e-5;
}

void expect_matches(const std::vector<float>& got, const Expected& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.out.size()) << what;
  size_t bad = 0;
  double worst = 0;  // largest error / tolerance
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want.out[i])), tol = tolerance(want, i);
    worst = std::max(worst, std::isnan(err) ? INFINITY : err / tol);
    if (!(err <= tol) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want.out[i] << " (err " << err
                    << " > tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance (worst err/tol "
                     << worst << ")";
}

// Runs the batch on the GPU with the given split settings (and sliding
// window, 0: none) and compares.
void check_batch(const Batch& b, const std::vector<int64_t>& split_modes, const std::string& label,
                 int64_t window = 0) {
  const float scale = 1.0f / std::sqrt(float(b.hd));
  const Expected want = cpu_expected(b, scale, window);
  const GpuBatch g(b);
  for (int64_t splits : split_modes) {
    const std::string what =
        fmt::format("{} {} splits={}{}", label, b.name(), splits == 0 ? "auto" : std::to_string(splits),
                    window > 0 ? fmt::format(" window={}", window) : "");
    expect_matches(gpu_attention(g, scale, exact_hints(b, splits), window), want, what);
  }
}

// ---- paged attention ---------------------------------------------------------

TEST(CudaPagedAttention, DecodeSweep) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Heads {
    int64_t nh, nkv;
  };
  const Heads heads[] = {{8, 8}, {16, 4}, {32, 4}};  // GQA ratios 1, 4, 8
  uint32_t seed = 1000;
  for (int64_t hd : {64, 128})
    for (const Heads& h : heads)
      for (int64_t ctx : {1, 15, 16, 17, 1000, 8192}) {
        // The first sequence has exactly ctx keys, the others random lengths up to it.
        const int64_t batch = ctx >= 8192 ? 2 : ctx >= 1000 ? 9 : 33;
        std::mt19937 rng(++seed);
        std::vector<SeqSpec> seqs = {{1, ctx}};
        for (int64_t i = 1; i < batch; ++i) seqs.push_back({1, std::uniform_int_distribution<int64_t>(1, ctx)(rng)});
        check_batch(make_batch(seqs, 16, h.nh, h.nkv, hd, seed), {0, 1, 3}, "decode");
      }
}

TEST(CudaPagedAttention, DecodeLargeBatchesAndGroups) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(77);
  const auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  struct Case {
    int64_t batch, max_ctx, nh, nkv, hd;
  };
  const Case cases[] = {
      {256, 200, 32, 8, 128},                         // a full decode batch (no split needed)
      {32, 2048, 32, 8, 128},                         // the benchmark's heads
      {64, 700, 16, 2, 64},   {5, 3000, 32, 1, 128},  // MQA: 32 heads per KV head (two 16-row chunks)
      {3, 5000, 24, 1, 64},                           // 24 heads per KV head (a partial chunk)
      {1, 8192, 32, 8, 128},                          // one long sequence: split-KV matters most
  };
  uint32_t seed = 2000;
  for (const Case& c : cases) {
    std::vector<SeqSpec> seqs;
    for (int64_t i = 0; i < c.batch; ++i) seqs.push_back({1, i == 0 ? c.max_ctx : uni(1, c.max_ctx)});
    check_batch(make_batch(seqs, 16, c.nh, c.nkv, c.hd, ++seed), {0, 1, 16}, "decode");
  }
}

// What a batching engine schedules in one step, in random order.
std::vector<SeqSpec> mixed_seqs(std::mt19937& rng, int64_t scale) {
  const auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t prefill = uni(2, 40 * scale), chunk = uni(2, 24 * scale);
  std::vector<SeqSpec> seqs = {
      {1, uni(2, 300 * scale)},              // decode after a long context
      {1, 1},                                // the first token's decode
      {1, 16 * uni(1, 4)},                   // decode ending exactly on a block boundary
      {prefill, prefill},                    // a fresh prefill
      {chunk, chunk + uni(1, 280 * scale)},  // a prefill chunk after cached context
      {0, uni(0, 50)},                       // a sequence without queries this step
      {1, uni(100, 900)},
  };
  std::shuffle(seqs.begin(), seqs.end(), rng);
  return seqs;
}

TEST(CudaPagedAttention, PrefillChunkedAndMixed) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Heads {
    int64_t nh, nkv;
  };
  const Heads heads[] = {{8, 8}, {8, 2}, {16, 2}};  // GQA ratios 1, 4, 8
  uint32_t seed = 3000;
  for (int64_t hd : {64, 128})
    for (const Heads& h : heads) {
      // Fresh prefills (every row's diagonal), chunked prefills at the end of
      // a longer cached context, and mixed batches.
      for (int64_t n : {2, 17, 64, 65, 333})
        check_batch(make_batch({{n, n}}, 16, h.nh, h.nkv, hd, ++seed), {0, 1, 2}, "prefill");
      check_batch(make_batch({{100, 1000}, {64, 3000}, {5, 8192}}, 16, h.nh, h.nkv, hd, ++seed), {0, 1, 4}, "chunked");
      for (int64_t scale : {1, 4}) {
        std::mt19937 rng(++seed);
        check_batch(make_batch(mixed_seqs(rng, scale), 16, h.nh, h.nkv, hd, seed), {0, 1, 3}, "mixed");
      }
    }
  // A long fresh prefill and a long chunk, 32 query heads over 8.
  check_batch(make_batch({{1000, 1000}}, 16, 32, 8, 128, ++seed), {0, 1}, "prefill");
  check_batch(make_batch({{700, 2100}, {1, 900}, {1, 5}}, 16, 32, 8, 64, ++seed), {0, 1}, "chunked");
}

TEST(CudaPagedAttention, OtherBlockSizes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 4000;
  for (int64_t bs : {1, 5, 8, 32}) {
    std::mt19937 rng(++seed);
    check_batch(make_batch(mixed_seqs(rng, 1), bs, 8, 2, 128, seed), {0, 1, 3}, "mixed");
    std::vector<SeqSpec> decode;
    for (int i = 0; i < 5; ++i) decode.push_back({1, std::uniform_int_distribution<int64_t>(1, 600)(rng)});
    check_batch(make_batch(decode, bs, 16, 4, 64, ++seed), {0, 1, 3}, "decode");
  }
}

TEST(CudaPagedAttention, HintsOnlyChangeTheSpeed) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(5000);
  for (int round = 0; round < 2; ++round) {
    const Batch b = round == 0 ? make_batch(mixed_seqs(rng, 2), 16, 16, 4, 128, 5001)
                               : make_batch({{1, 700}, {1, 3}, {0, 9}, {1, 1500}}, 16, 16, 4, 128, 5002);
    const float scale = 1.0f / std::sqrt(float(b.hd));
    const Expected want = cpu_expected(b, scale);
    const GpuBatch g(b);
    // Unknown hints are worked out on the host: the same kernels run, bit for bit.
    const std::vector<float> exact = gpu_attention(g, scale, exact_hints(b, 0));
    expect_matches(exact, want, b.name() + " exact hints");
    EXPECT_EQ(gpu_attention(g, scale, ops::PagedAttentionHints{}), exact) << b.name();
    // Wrong hints: "decode" for a batch with prefills (the decode kernel then
    // walks each query), "prefill" for a decode batch, context lengths far
    // off (only the split heuristic reads them).
    const ops::PagedAttentionHints wrong[] = {
        {1, b.max_ctx, 0}, {b.max_q + 50, b.max_ctx, 0}, {b.max_q, 1, 0}, {b.max_q, 1 << 20, 0}, {1, 1 << 20, 0}};
    for (const auto& h : wrong)
      expect_matches(gpu_attention(g, scale, h), want,
                     fmt::format("{} hints max_q={} max_ctx={}", b.name(), h.max_query_len, h.max_context_len));
  }
}

// One key's V row set to 256 (everything else is in [-1, 1]): its share of
// every row that may see it is far above the tolerance, so a key that is
// skipped, seen twice or seen by a row that must not see it fails the test.
TEST(CudaPagedAttention, EveryKeyCountsOnceAndOnlyWhereVisible) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    std::vector<SeqSpec> seqs;
    int64_t splits;
    std::vector<int64_t> needles;  // key positions of sequence 0
    int64_t window = 0;            // sliding window (0: none)
  };
  const Case cases[] = {
      {{{1, 1000}}, 7, {0, 1, 15, 16, 63, 64, 143, 144, 500, 999}},  // splits of 144 keys
      {{{1, 8192}, {1, 40}}, 0, {0, 16, 255, 256, 4095, 4096, 8176, 8191}},
      {{{40, 600}, {1, 30}},
       1,
       {0, 300, 559, 560, 565, 599}},  // chunked prefill: rows 560.. see keys <= their position
      {{{40, 600}}, 3, {63, 64, 200, 575, 576, 590}},
      // Sliding windows: keys just outside (never seen), the first visible
      // key, the first key of the tile holding it, and the newest.
      {{{1, 1000}}, 7, {0, 895, 896, 899, 900, 999}, 100},  // keys [900, 1000): splits of 16 keys
      {{{1, 8192}, {1, 40}}, 0, {0, 7935, 7936, 8191}, 256},
      {{{1, 8192}}, 4, {8190, 8191}, 1},
      {{{40, 600}, {1, 30}}, 1, {500, 520, 521, 559, 560, 599}, 40},  // row i sees [521 + i, 560 + i]
      {{{40, 600}}, 3, {63, 64, 511, 512, 530, 559, 575, 590}, 64},
      {{{300, 300}}, 2, {0, 1, 63, 64, 127, 128, 200, 299}, 65},
  };
  uint32_t seed = 6000;
  for (const Case& c : cases)
    for (int64_t hd : {64, 128}) {
      Batch b = make_batch(c.seqs, 16, 8, 2, hd, ++seed);
      const float scale = 1.0f / std::sqrt(float(hd));
      const Expected base = cpu_expected(b, scale, c.window);
      GpuBatch g(b);
      const int64_t row = b.nkv * hd;
      for (int64_t p : c.needles) {
        const int64_t slot = b.slot(0, p);
        float* host_row = b.v_cache.data_as<float>() + slot * row;
        const std::vector<float> saved(host_row, host_row + row);
        std::fill(host_row, host_row + row, 256.0f);
        Tensor gpu_rows = g.v_cache.reshape({b.num_blocks * b.bs, row});
        Tensor gpu_row = gpu_rows.slice(0, slot, slot + 1);
        gpu_row.copy_from(Tensor::from_floats({1, row}, std::vector<float>(size_t(row), 256.0f)).to_dtype(DType::BF16));
        const Expected want = cpu_expected(b, scale, c.window);
        const std::string what = fmt::format("{} needle at {} splits={} window={}", b.name(), p, c.splits, c.window);
        // The needle moves the rows that see it by far more than the tolerance,
        // and leaves the others exactly as they were.
        const int64_t n_q = c.seqs[0].n_q, per_token = b.nh * hd;
        for (int64_t i = 0; i < n_q; ++i) {
          const int64_t pos = c.seqs[0].ctx - n_q + i;
          const bool sees = pos >= p && (c.window == 0 || pos - p < c.window);
          double moved = 0;
          for (int64_t e = i * per_token; e < (i + 1) * per_token; ++e)
            moved = std::max(moved, std::fabs(double(want.out[size_t(e)]) - double(base.out[size_t(e)])) /
                                        tolerance(want, size_t(e)));
          if (sees)
            EXPECT_GT(moved, 4.0) << what << " query " << i;
          else
            EXPECT_EQ(moved, 0.0) << what << " query " << i;
        }
        expect_matches(gpu_attention(g, scale, exact_hints(b, c.splits), c.window), want, what);
        std::copy(saved.begin(), saved.end(), host_row);
        gpu_row.copy_from(Tensor::from_floats({1, row}, saved).to_dtype(DType::BF16));
      }
    }
}

// ---- sliding window -------------------------------------------------------------

// Decode, prefill (fresh and chunked) and mixed batches with windows of one
// key, around a tile (16 decode, 64 prefill keys), and longer than the
// contexts; split-KV forced to 2 and 4 as well as chosen and off.
TEST(CudaPagedAttention, SlidingWindowDecode) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 11000;
  for (int64_t hd : {64, 128}) {
    std::mt19937 rng(++seed);
    std::vector<SeqSpec> seqs = {{1, 8192}, {1, 1000}, {1, 100}, {1, 17}, {1, 16}, {1, 1}};
    for (int i = 0; i < 6; ++i) seqs.push_back({1, std::uniform_int_distribution<int64_t>(1, 3000)(rng)});
    const Batch b = make_batch(seqs, 16, 32, 8, hd, seed);
    for (int64_t window : {1, 2, 15, 16, 17, 100, 1000, 4096, 8192, 10000})
      check_batch(b, {0, 1, 2, 4}, "decode", window);
  }
}

TEST(CudaPagedAttention, SlidingWindowPrefill) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Heads {
    int64_t nh, nkv;
  };
  const Heads heads[] = {{8, 8}, {16, 2}};  // GQA ratios 1 (128 tokens per CTA) and 8 (16 tokens)
  uint32_t seed = 12000;
  for (int64_t hd : {64, 128})
    for (const Heads& h : heads) {
      const Batch fresh = make_batch({{333, 333}}, 16, h.nh, h.nkv, hd, ++seed);
      for (int64_t window : {1, 63, 64, 65, 200, 333, 1000}) check_batch(fresh, {0, 1, 2, 4}, "prefill", window);
      const Batch chunked = make_batch({{100, 1000}, {64, 3000}, {5, 8192}}, 16, h.nh, h.nkv, hd, ++seed);
      for (int64_t window : {1, 64, 129, 4096}) check_batch(chunked, {0, 1, 2, 4}, "chunked", window);
    }
}

TEST(CudaPagedAttention, SlidingWindowMixedAndOtherBlockSizes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 13000;
  for (int64_t hd : {64, 128})
    for (int64_t scale : {1, 4}) {
      std::mt19937 rng(++seed);
      const Batch b = make_batch(mixed_seqs(rng, scale), 16, 16, 4, hd, seed);
      for (int64_t window : {1, 5, 37, 300, 4000}) check_batch(b, {0, 1, 2, 4}, "mixed", window);
    }
  for (int64_t bs : {1, 5, 8, 32}) {
    std::mt19937 rng(++seed);
    const Batch b = make_batch(mixed_seqs(rng, 1), bs, 8, 2, 128, seed);
    for (int64_t window : {1, 23, 100}) check_batch(b, {0, 1, 2, 4}, "mixed", window);
  }
}

// Every cache row before the key tile holding a sequence's first visible key
// (rounded down to 64 keys, the larger tile) is set to NaN in both caches:
// the kernels must not read those rows, so the output still matches the
// clean CPU result. Long contexts, small windows.
TEST(CudaPagedAttention, SlidingWindowReadsOnlyTheWindow) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 14000;
  for (int64_t hd : {64, 128})
    for (int64_t window : {1, 100, 256}) {
      Batch b = make_batch({{1, 8192}, {64, 4000}, {1, 3000}, {200, 200}}, 16, 16, 4, hd, ++seed);
      const float scale = 1.0f / std::sqrt(float(hd));
      const Expected want = cpu_expected(b, scale, window);
      const int64_t row = b.nkv * hd;
      int64_t poisoned = 0;
      for (size_t s = 0; s < b.seqs.size(); ++s) {
        const int64_t first = std::max<int64_t>(0, b.seqs[s].ctx - b.seqs[s].n_q - window + 1);
        for (int64_t p = 0; p < first / 64 * 64; ++p, ++poisoned) {
          std::fill_n(b.k_cache.data_as<float>() + b.slot(s, p) * row, row, NAN);
          std::fill_n(b.v_cache.data_as<float>() + b.slot(s, p) * row, row, NAN);
        }
      }
      EXPECT_GT(poisoned, 8000) << window;
      const GpuBatch g(b);
      for (int64_t splits : {0, 1, 2, 4})
        expect_matches(
            gpu_attention(g, scale, exact_hints(b, splits), window), want,
            fmt::format("{} window={} splits={} (rows before the window are NaN)", b.name(), window, splits));
    }
}

// Window 0 and a window covering every context: the same result as the
// overloads without a window, bit for bit (the same kernels on the same keys).
TEST(CudaPagedAttention, SlidingWindowCoveringTheContextIsNoWindow) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(15000);
  const Batch b = make_batch(mixed_seqs(rng, 2), 16, 16, 4, 128, 15001);
  const GpuBatch g(b);
  const float scale = 1.0f / std::sqrt(float(b.hd));
  for (int64_t splits : {0, 1, 3}) {
    const std::vector<float> base = gpu_attention(g, scale, exact_hints(b, splits));
    for (int64_t window : {int64_t(0), b.max_ctx, b.max_ctx + 1, int64_t(1) << 40})
      EXPECT_EQ(gpu_attention(g, scale, exact_hints(b, splits), window), base)
          << b.name() << " splits=" << splits << " window=" << window;
  }
}

TEST(CudaPagedAttention, EmptyStepsAndSequences) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const Batch b = make_batch({{0, 5}, {0, 0}}, 16, 4, 2, 64, 7000);
  const GpuBatch g(b);
  EXPECT_TRUE(gpu_attention(g, 0.125f, exact_hints(b, 0)).empty());
  check_batch(make_batch({{0, 17}, {3, 3}, {0, 0}, {1, 20}}, 16, 4, 2, 64, 7001), {0, 1, 2}, "with empty sequences");
}

TEST(CudaPagedAttention, RejectsBadArguments) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const auto bf16 = [](const Shape& s) { return Tensor::zeros(s, DType::BF16, kGpu); };
  const auto i32 = [](const Shape& s, const std::vector<int32_t>& v) { return test::i32_tensor(s, v).to(kGpu); };
  // Two sequences: 2 queries over 7 keys and 1 query over 3 keys; block_size 4.
  Tensor q = bf16({3, 6, 64}), kc = bf16({5, 4, 2, 64}), vc = bf16({5, 4, 2, 64}), out = bf16({3, 6, 64});
  Tensor qs = i32({3}, {0, 2, 3}), cl = i32({2}, {7, 3}), bt = i32({2, 3}, {4, 0, -1, 2, -1, -1});
  const auto run = [&](const Tensor& q_, const Tensor& kc_, const Tensor& vc_, const Tensor& bt_, Tensor& out_) {
    ops::paged_attention(q_, kc_, vc_, qs, cl, bt_, 0.5f, out_);
  };
  const std::string op = "paged_attention";
  EXPECT_NO_THROW(run(q, kc, vc, bt, out));
  using test::expect_op_error;
  // F32 is the CPU's dtype; CUDA takes BF16.
  expect_op_error(op, "q", [&] { run(Tensor::zeros({3, 6, 64}, DType::F32, kGpu), kc, vc, bt, out); });
  expect_op_error(op, "k_cache", [&] { run(q, Tensor::zeros({5, 4, 2, 64}, DType::F32, kGpu), vc, bt, out); });
  expect_op_error(op, "out", [&] {
    Tensor o = Tensor::zeros({3, 6, 64}, DType::F32, kGpu);
    run(q, kc, vc, bt, o);
  });
  // Head sizes other than 64 and 128.
  expect_op_error(op, "q", [&] {
    Tensor o = bf16({3, 6, 96});
    run(bf16({3, 6, 96}), bf16({5, 4, 2, 96}), bf16({5, 4, 2, 96}), bt, o);
  });
  // Block size 0, caches on another device.
  expect_op_error(op, "k_cache", [&] { run(q, bf16({5, 0, 2, 64}), bf16({5, 0, 2, 64}), bt, out); });
  expect_op_error(op, "k_cache", [&] { run(q, Tensor::zeros({5, 4, 2, 64}, DType::BF16), vc, bt, out); });
  // Malformed indices on the device are still caught when the hints are unknown.
  expect_op_error(op, "block_tables", [&] { run(q, kc, vc, i32({2, 3}, {4, 5, -1, 2, -1, -1}), out); });
  expect_op_error(op, "hints", [&] {
    ops::paged_attention(q, kc, vc, qs, cl, bt, 0.5f, ops::PagedAttentionHints{1, 7, -1}, out);
  });
  expect_op_error(op, "sliding_window",
                  [&] { ops::paged_attention(q, kc, vc, qs, cl, bt, 0.5f, ops::PagedAttentionHints{}, -1, out); });
  // BF16 on the CPU is refused too.
  expect_op_error(op, "q", [&] {
    Tensor o = Tensor::zeros({3, 6, 64}, DType::BF16);
    ops::paged_attention(Tensor::zeros({3, 6, 64}, DType::BF16), Tensor::zeros({5, 4, 2, 64}, DType::BF16),
                         Tensor::zeros({5, 4, 2, 64}, DType::BF16), qs.to(kCpu), cl.to(kCpu), bt.to(kCpu), 0.5f, o);
  });
}

// ---- write_kv_cache and rope_write_kv_cache ------------------------------------

// Equal as BF16 bit patterns (NaN included: to_floats keeps the payload).
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && bad++ < 5) ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(bad, 0u) << what;
}

struct KvRows {
  Tensor k, v;          // [n, nkv, hd] F32, BF16-exact
  Tensor slot_mapping;  // [n] I32, distinct slots and -1 padding
};

KvRows random_rows(int64_t n, int64_t nkv, int64_t hd, int64_t n_slots, uint32_t seed) {
  std::mt19937 rng(seed);
  KvRows r{Tensor::empty({n, nkv, hd}, DType::F32), Tensor::empty({n, nkv, hd}, DType::F32), {}};
  fill_uniform(r.k.data_as<float>(), r.k.numel(), rng, -2.0f, 2.0f);
  fill_uniform(r.v.data_as<float>(), r.v.numel(), rng, -2.0f, 2.0f);
  std::vector<int32_t> all(static_cast<size_t>(n_slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> slots(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) slots[size_t(t)] = t % 5 == 2 ? -1 : all[size_t(t)];
  r.slot_mapping = test::i32_tensor({n}, slots);
  return r;
}

TEST(CudaWriteKvCache, MatchesTheCpuBitwise) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t n, nkv, hd, bs, num_blocks;
  };
  // 16-byte rows (vector path) and odd head sizes (scalar path).
  const Case cases[] = {{37, 8, 128, 16, 5}, {200, 2, 64, 16, 20}, {9, 3, 17, 5, 4}, {1, 1, 96, 1, 3}};
  uint32_t seed = 8000;
  for (const Case& c : cases) {
    const KvRows r = random_rows(c.n, c.nkv, c.hd, c.num_blocks * c.bs, ++seed);
    const Shape shape = {c.num_blocks, c.bs, c.nkv, c.hd};
    Tensor want_k = test::nan_tensor(shape), want_v = test::nan_tensor(shape);
    ops::write_kv_cache(r.k, r.v, r.slot_mapping, want_k, want_v);
    Tensor kc = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu);
    Tensor vc = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu);
    ops::write_kv_cache(r.k.to_dtype(DType::BF16).to(kGpu), r.v.to_dtype(DType::BF16).to(kGpu), r.slot_mapping.to(kGpu),
                        kc, vc);
    const std::string what = fmt::format("n={} nkv={} hd={} bs={}", c.n, c.nkv, c.hd, c.bs);
    expect_same_bits(kc.to_floats(), want_k.to_dtype(DType::BF16).to_floats(), what + " k_cache");
    expect_same_bits(vc.to_floats(), want_v.to_dtype(DType::BF16).to_floats(), what + " v_cache");
  }
  // F32 rows on CUDA are refused.
  Tensor kc = Tensor::zeros({2, 4, 1, 8}, DType::F32, kGpu), vc = Tensor::zeros({2, 4, 1, 8}, DType::F32, kGpu);
  test::expect_op_error("write_kv_cache", "k", [&] {
    ops::write_kv_cache(Tensor::zeros({1, 1, 8}, DType::F32, kGpu), Tensor::zeros({1, 1, 8}, DType::F32, kGpu),
                        test::i32_tensor({1}, {0}).to(kGpu), kc, vc);
  });
}

std::vector<float> inv_freqs(int64_t r, int64_t head_dim) {
  std::vector<float> f(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j) f[size_t(j)] = float(1.0 / std::pow(500000.0, double(2 * j) / double(head_dim)));
  return f;
}

// got within one BF16 step of want (the GPU's F32 value equals the CPU's
// unless a double-precision cos/sin differs in its last bit, and is rounded
// to BF16 once), and equal in at least 99.9% of the elements.
void expect_bf16_of(const std::vector<float>& got, const std::vector<float>& want_f32, const std::string& what) {
  ASSERT_EQ(got.size(), want_f32.size()) << what;
  size_t bad = 0, exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float want = round_bf16(want_f32[i]);
    if (std::isnan(want)) {  // a cache slot no row was written to
      bad += !std::isnan(got[i]);
      exact += std::isnan(got[i]);
      continue;
    }
    exact += got[i] == want;
    if (!(std::fabs(got[i] - want) <= std::ldexp(std::fabs(want), -7)) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want;
  }
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_GE(double(exact), 0.999 * double(got.size())) << what;
}

TEST(CudaRopeWriteKvCache, MatchesTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t n, nh, nkv, hd, r, bs, num_blocks;
    float factor;
  };
  const Case cases[] = {{300, 32, 8, 128, 64, 16, 30, 1.0f},
                        {17, 16, 2, 64, 32, 16, 3, 1.0f},
                        {40, 8, 4, 64, 16, 5, 10, 0.7f},  // partial rotary, attention factor
                        {5, 6, 3, 40, 20, 1, 9, 1.0f}};
  uint32_t seed = 9000;
  for (const Case& c : cases) {
    std::mt19937 rng(++seed);
    const KvRows r = random_rows(c.n, c.nkv, c.hd, c.num_blocks * c.bs, seed);
    Tensor q = Tensor::empty({c.n, c.nh, c.hd}, DType::F32);
    fill_uniform(q.data_as<float>(), q.numel(), rng, -2.0f, 2.0f);
    std::vector<int32_t> pos(static_cast<size_t>(c.n));
    for (int32_t& p : pos) p = std::uniform_int_distribution<int32_t>(0, 131072)(rng);
    const Tensor positions = test::i32_tensor({c.n}, pos);
    const Tensor inv_freq = Tensor::from_floats({c.r}, inv_freqs(c.r, c.hd));
    const Shape shape = {c.num_blocks, c.bs, c.nkv, c.hd};

    Tensor want_q = q.to(kCpu), want_k = test::nan_tensor(shape), want_v = test::nan_tensor(shape);
    ops::rope_write_kv_cache(want_q, r.k, r.v, positions, inv_freq, c.factor, r.slot_mapping, want_k, want_v);

    Tensor gq = q.to_dtype(DType::BF16).to(kGpu), gk = r.k.to_dtype(DType::BF16).to(kGpu);
    Tensor kc = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu);
    Tensor vc = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu);
    ops::rope_write_kv_cache(gq, gk, r.v.to_dtype(DType::BF16).to(kGpu), positions.to(kGpu), inv_freq.to(kGpu),
                             c.factor, r.slot_mapping.to(kGpu), kc, vc);
    const std::string what = fmt::format("n={} heads={}/{} hd={} r={}", c.n, c.nh, c.nkv, c.hd, c.r);
    expect_bf16_of(gq.to_floats(), want_q.to_floats(), what + " q");
    expect_bf16_of(kc.to_floats(), want_k.to_floats(), what + " k_cache");
    expect_same_bits(vc.to_floats(), want_v.to_dtype(DType::BF16).to_floats(), what + " v_cache");
    expect_same_bits(gk.to_floats(), r.k.to_floats(), what + " k is left alone");
  }
}

// The fused-QKV variant on the GPU: bitwise what the split op gives on the
// GPU (the same kernel reading at strides), qkv left as it was.
TEST(CudaRopeWriteKvCacheFused, EqualsTheSplitOpBitwise) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t n, nh, nkv, hd, r, bs, num_blocks;
    float factor;
  };
  const Case cases[] = {{256, 32, 8, 128, 64, 16, 20, 1.0f},
                        {17, 16, 2, 64, 32, 16, 3, 1.0f},
                        {40, 8, 4, 64, 16, 5, 10, 0.7f},  // partial rotary: the pass-through dims are copied
                        {5, 6, 3, 40, 13, 1, 9, 1.0f}};
  uint32_t seed = 9500;
  for (const Case& c : cases) {
    std::mt19937 rng(++seed);
    const int64_t nq = c.nh + 2 * c.nkv;
    Tensor qkv = Tensor::empty({c.n, nq, c.hd}, DType::F32);
    fill_uniform(qkv.data_as<float>(), qkv.numel(), rng, -2.0f, 2.0f);
    std::vector<int32_t> pos(static_cast<size_t>(c.n)), all(static_cast<size_t>(c.num_blocks * c.bs));
    for (int32_t& p : pos) p = std::uniform_int_distribution<int32_t>(0, 131072)(rng);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(static_cast<size_t>(c.n));
    for (int64_t t = 0; t < c.n; ++t) slots[size_t(t)] = t % 5 == 2 ? -1 : all[size_t(t)];
    const Tensor positions = test::i32_tensor({c.n}, pos).to(kGpu),
                 slot_mapping = test::i32_tensor({c.n}, slots).to(kGpu);
    const Tensor inv_freq = Tensor::from_floats({c.r}, inv_freqs(c.r, c.hd)).to(kGpu);
    const Shape shape = {c.num_blocks, c.bs, c.nkv, c.hd};
    const Tensor host = qkv.to_dtype(DType::BF16);  // [n, nq, hd]

    // The split op: q, k, v copied out on the host.
    Tensor q = host.slice(1, 0, c.nh).contiguous().to(kGpu);
    const Tensor k = host.slice(1, c.nh, c.nh + c.nkv).contiguous().to(kGpu);
    const Tensor v = host.slice(1, c.nh + c.nkv, nq).contiguous().to(kGpu);
    Tensor want_k = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu), want_v = want_k.to(kCpu).to(kGpu);
    ops::rope_write_kv_cache(q, k, v, positions, inv_freq, c.factor, slot_mapping, want_k, want_v);

    const Tensor gqkv = host.to(kGpu);
    Tensor got_q = test::nan_tensor({c.n, c.nh, c.hd}).to_dtype(DType::BF16).to(kGpu);
    Tensor kc = test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu), vc = kc.to(kCpu).to(kGpu);
    ops::rope_write_kv_cache_fused(gqkv, positions, inv_freq, c.factor, slot_mapping, got_q, kc, vc);
    const std::string what = fmt::format("n={} heads={}/{} hd={} r={}", c.n, c.nh, c.nkv, c.hd, c.r);
    expect_same_bits(got_q.to_floats(), q.to_floats(), what + " q");
    expect_same_bits(kc.to_floats(), want_k.to_floats(), what + " k_cache");
    expect_same_bits(vc.to_floats(), want_v.to_floats(), what + " v_cache");
    expect_same_bits(gqkv.to_floats(), host.to_floats(), what + " qkv is left alone");
  }
}

// ---- rope_write_kv_cache with q/k norms (Qwen3) and per-token frequencies ----

// One step's inputs, as BF16-exact F32 on the host: a fused QKV output,
// positions up to 131072, slots with -1 padding (every fifth row), sequences
// of 1 to 8 tokens each with its own frequencies (dynamic NTK: a per-sequence
// base) and q/k norm weights in [0.25, 2).
struct NormProblem {
  int64_t n = 0, nh = 0, nkv = 0, hd = 0, r = 0, bs = 0, num_blocks = 0;
  float factor = 1.0f;
  std::vector<int64_t> seq_start;            // sequence s: tokens [seq_start[s], seq_start[s + 1])
  std::vector<std::vector<float>> seq_freq;  // [n_seqs][r]
  Tensor qkv;                                // [n, nh + 2 nkv, hd] F32, BF16-exact
  Tensor positions, slot_mapping;            // [n] I32
  Tensor inv_freq_1d;                        // [r]: the first sequence's row
  Tensor inv_freq_2d;                        // [n, r]: each token's sequence's row
  Tensor q_norm, k_norm;                     // [hd] F32 or BF16

  int64_t nq() const { return nh + 2 * nkv; }
  Shape cache_shape() const { return {num_blocks, bs, nkv, hd}; }
  Tensor part(int64_t lo, int64_t hi) const { return qkv.slice(1, lo, hi).contiguous(); }
  Tensor q() const { return part(0, nh); }
  Tensor k() const { return part(nh, nh + nkv); }
  Tensor v() const { return part(nh + nkv, nq()); }
  Tensor gpu_nan(const Shape& shape) const { return test::nan_tensor(shape).to_dtype(DType::BF16).to(kGpu); }
  std::string name(DType norm_dtype, bool per_token) const {
    return fmt::format("n={} heads={}/{} hd={} r={} factor={} norm {} per_token={} seqs={}", n, nh, nkv, hd, r, factor,
                       dtype_name(norm_dtype), per_token, seq_freq.size());
  }
};

struct NormCase {
  int64_t n, nh, nkv, hd, r, bs, num_blocks;
  float factor;
};

// Qwen3-8B's attention shape; partial rotary with a factor; head_dim 40
// (rms_norm's 8-value packs); head_dim 36 (its single values); one token.
const NormCase kNormCases[] = {{300, 32, 8, 128, 64, 16, 30, 1.0f},
                               {40, 16, 4, 64, 16, 5, 10, 0.7f},
                               {17, 6, 3, 40, 20, 1, 20, 1.0f},
                               {9, 4, 2, 36, 12, 4, 5, 1.0f},
                               {1, 8, 2, 128, 32, 16, 2, 1.0f}};

NormProblem make_norm_problem(const NormCase& c, DType norm_dtype, uint32_t seed) {
  NormProblem p;
  p.n = c.n, p.nh = c.nh, p.nkv = c.nkv, p.hd = c.hd, p.r = c.r, p.bs = c.bs, p.num_blocks = c.num_blocks;
  p.factor = c.factor;
  std::mt19937 rng(seed);
  Tensor qkv = Tensor::empty({c.n, p.nq(), c.hd}, DType::F32);
  fill_uniform(qkv.data_as<float>(), qkv.numel(), rng, -2.0f, 2.0f);
  p.qkv = qkv;  // fill_uniform rounds to BF16
  p.seq_start = {0};
  std::vector<float> rows;
  while (p.seq_start.back() < c.n) {
    const int64_t lo = p.seq_start.back(), hi = std::min<int64_t>(c.n, lo + 1 + int64_t(rng() % 8));
    p.seq_start.push_back(hi);
    const double base = 500000.0 * std::pow(1.0 + double(rng() % 1000) / 100.0, double(c.hd) / double(c.hd - 2));
    std::vector<float> f(size_t(c.r));
    for (int64_t j = 0; j < c.r; ++j) f[size_t(j)] = float(std::pow(base, -double(2 * j) / double(c.hd)));
    for (int64_t t = lo; t < hi; ++t) rows.insert(rows.end(), f.begin(), f.end());
    p.seq_freq.push_back(f);
  }
  p.inv_freq_1d = Tensor::from_floats({c.r}, p.seq_freq[0]);
  p.inv_freq_2d = Tensor::from_floats({c.n, c.r}, rows);
  std::vector<int32_t> pos(size_t(c.n)), all(size_t(c.num_blocks * c.bs)), slots(size_t(c.n));
  for (int32_t& x : pos) x = std::uniform_int_distribution<int32_t>(0, 131072)(rng);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  for (int64_t t = 0; t < c.n; ++t) slots[size_t(t)] = t % 5 == 2 ? -1 : all[size_t(t)];
  p.positions = test::i32_tensor({c.n}, pos);
  p.slot_mapping = test::i32_tensor({c.n}, slots);
  std::vector<float> qw(size_t(c.hd)), kw(size_t(c.hd));
  std::uniform_real_distribution<float> wdist(0.25f, 2.0f);
  for (float& x : qw) x = wdist(rng);
  for (float& x : kw) x = wdist(rng);
  p.q_norm = Tensor::from_floats({c.hd}, qw);
  p.k_norm = Tensor::from_floats({c.hd}, kw);
  if (norm_dtype == DType::BF16) {
    p.q_norm = p.q_norm.to_dtype(DType::BF16);
    p.k_norm = p.k_norm.to_dtype(DType::BF16);
  }
  return p;
}

// Each head row of x [n, heads, hd] through ops::rms_norm in place (x viewed as [n * heads, hd]).
void norm_heads(Tensor& x, const Tensor& w, float eps) {
  Tensor rows = x.reshape({x.dim(0) * x.dim(1), x.dim(2)});
  ops::rms_norm(rows, w, eps, rows);
}

// x [n, heads, hd] (F32, BF16-exact after the rounding below) -> the
// magnitude a one-step BF16 change of the rotation's inputs moves each
// output by: (|x1| + |x2|) * |factor| for rotated dims, |x| for the rest.
Tensor input_scale(const Tensor& x, int64_t r, float factor) {
  const int64_t hd = x.dim(2);
  const std::vector<float> xf = x.to_floats();
  std::vector<float> s(xf.size());
  for (size_t row = 0; row < xf.size(); row += size_t(hd))
    for (int64_t d = 0; d < hd; ++d) {
      const int64_t j = d < r ? d : d - r;
      s[row + size_t(d)] =
          d < 2 * r ? (std::fabs(xf[row + size_t(j)]) + std::fabs(xf[row + size_t(j + r)])) * std::fabs(factor)
                    : std::fabs(xf[row + size_t(d)]);
    }
  return Tensor::from_floats(x.shape(), s);
}

// got (BF16 values) against the CPU's F32 want rounded to BF16: equal in at
// least 99.9% of the elements, and never further than one BF16 step of want
// plus one BF16 step of the rotation's inputs (scale): the GPU's sum of
// squares runs in another order than the CPU's, and where that moves a
// normalized value across a BF16 rounding boundary, the rotation's input
// differs by one step. NaN (a slot no row was written to) must stay NaN.
void expect_bf16_near(const std::vector<float>& got, const std::vector<float>& want_f32,
                      const std::vector<float>& scale, const std::string& what) {
  ASSERT_EQ(got.size(), want_f32.size()) << what;
  ASSERT_EQ(got.size(), scale.size()) << what;
  size_t bad = 0, exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float want = round_bf16(want_f32[i]);
    if (std::isnan(want)) {
      bad += !std::isnan(got[i]);
      exact += std::isnan(got[i]);
      continue;
    }
    exact += got[i] == want;
    const float tol = std::ldexp(std::fabs(want), -7) + std::ldexp(scale[i], -7);
    if (!(std::fabs(got[i] - want) <= tol) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want << " (tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_GE(double(exact), 0.999 * double(got.size())) << what << ": " << exact << " of " << got.size() << " exact";
}

// The GPU (BF16) against the CPU (F32) with q/k norms and/or per-token
// frequencies, fused and split variants. The CPU reference follows the
// GPU's documented rounding: rms_norm per head in F32, the normalized value
// rounded to BF16, then the F32 rotation (rounded to BF16 in the comparison).
TEST(CudaRopeWriteKvCache, QkNormAndPerTokenFreqsMatchTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 12000;
  for (const NormCase& c : kNormCases)
    for (DType wdt : {DType::F32, DType::BF16})
      for (bool norm : {false, true})
        for (bool per_token : {false, true}) {
          if (!norm && !per_token) continue;  // CudaRopeWriteKvCache.MatchesTheCpu
          if (!norm && wdt == DType::BF16) continue;
          const NormProblem p = make_norm_problem(c, wdt, ++seed);
          const float eps = 1e-6f;
          const Tensor& inv_freq = per_token ? p.inv_freq_2d : p.inv_freq_1d;
          // The CPU: norms, BF16 rounding, then the op without norms.
          Tensor q = p.q(), k = p.k();
          if (norm) {
            norm_heads(q, p.q_norm, eps);
            norm_heads(k, p.k_norm, eps);
            q = q.to_dtype(DType::BF16).to_dtype(DType::F32);
            k = k.to_dtype(DType::BF16).to_dtype(DType::F32);
          }
          const Tensor q_scale = input_scale(q, p.r, p.factor), k_scale = input_scale(k, p.r, p.factor);
          Tensor want_kc = test::nan_tensor(p.cache_shape()), want_vc = test::nan_tensor(p.cache_shape());
          ops::rope_write_kv_cache(q, k, p.v(), p.positions, inv_freq, p.factor, p.slot_mapping, want_kc, want_vc);
          // The scales of k, scattered to the cache slots as the rows are.
          Tensor kc_scale = test::nan_tensor(p.cache_shape()), unused = test::nan_tensor(p.cache_shape());
          ops::write_kv_cache(k_scale, k_scale, p.slot_mapping, kc_scale, unused);

          const Tensor gq_norm = p.q_norm.to(kGpu), gk_norm = p.k_norm.to(kGpu);
          const ops::RopeOptions opts = norm ? ops::RopeOptions{&gq_norm, &gk_norm, eps} : ops::RopeOptions{};
          const Tensor host = p.qkv.to_dtype(DType::BF16), positions = p.positions.to(kGpu);
          const Tensor slots = p.slot_mapping.to(kGpu), freq = inv_freq.to(kGpu);
          const std::string what = p.name(wdt, per_token) + (norm ? "" : " (no norms)");
          {  // fused
            const Tensor gqkv = host.to(kGpu);
            Tensor gq = p.gpu_nan({p.n, p.nh, p.hd}), kc = p.gpu_nan(p.cache_shape()), vc = p.gpu_nan(p.cache_shape());
            ops::rope_write_kv_cache_fused(gqkv, positions, freq, p.factor, slots, gq, kc, vc, opts);
            expect_bf16_near(gq.to_floats(), q.to_floats(), q_scale.to_floats(), what + " fused q");
            expect_bf16_near(kc.to_floats(), want_kc.to_floats(), kc_scale.to_floats(), what + " fused k_cache");
            expect_same_bits(vc.to_floats(), want_vc.to_dtype(DType::BF16).to_floats(), what + " fused v_cache");
            expect_same_bits(gqkv.to_floats(), host.to_floats(), what + " qkv is left alone");
          }
          {  // split, q in place
            Tensor gq = p.q().to_dtype(DType::BF16).to(kGpu);
            const Tensor gk = p.k().to_dtype(DType::BF16).to(kGpu), gv = p.v().to_dtype(DType::BF16).to(kGpu);
            Tensor kc = p.gpu_nan(p.cache_shape()), vc = p.gpu_nan(p.cache_shape());
            ops::rope_write_kv_cache(gq, gk, gv, positions, freq, p.factor, slots, kc, vc, opts);
            expect_bf16_near(gq.to_floats(), q.to_floats(), q_scale.to_floats(), what + " split q");
            expect_bf16_near(kc.to_floats(), want_kc.to_floats(), kc_scale.to_floats(), what + " split k_cache");
            expect_same_bits(vc.to_floats(), want_vc.to_dtype(DType::BF16).to_floats(), what + " split v_cache");
            expect_same_bits(gk.to_floats(), p.k().to_floats(), what + " k is left alone");
          }
        }
}

// On the GPU, with norms: bitwise ops::rms_norm on each head, then ops::rope,
// then ops::write_kv_cache (the header's rule), for both variants; and with
// a 2-D inv_freq, bitwise the fused op run per sequence with its 1-D row.
TEST(CudaRopeWriteKvCacheFused, QkNormEqualsRmsNormThenRopeBitwise) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  uint32_t seed = 13000;
  for (const NormCase& c : kNormCases)
    for (DType wdt : {DType::F32, DType::BF16})
      for (bool per_token : {false, true}) {
        const NormProblem p = make_norm_problem(c, wdt, ++seed);
        const float eps = 1e-5f;
        const Tensor host = p.qkv.to_dtype(DType::BF16);  // [n, nq, hd]
        const Tensor gqkv = host.to(kGpu), positions = p.positions.to(kGpu), slots = p.slot_mapping.to(kGpu);
        const Tensor freq = (per_token ? p.inv_freq_2d : p.inv_freq_1d).to(kGpu);
        const Tensor gq_norm = p.q_norm.to(kGpu), gk_norm = p.k_norm.to(kGpu);
        const ops::RopeOptions opts{&gq_norm, &gk_norm, eps};
        const std::string what = p.name(wdt, per_token);

        // The ops one by one on split copies.
        Tensor want_q = host.slice(1, 0, p.nh).contiguous().to(kGpu);
        Tensor want_k = host.slice(1, p.nh, p.nh + p.nkv).contiguous().to(kGpu);
        const Tensor gv = host.slice(1, p.nh + p.nkv, p.nq()).contiguous().to(kGpu);
        Tensor want_kc = p.gpu_nan(p.cache_shape()), want_vc = p.gpu_nan(p.cache_shape());
        norm_heads(want_q, gq_norm, eps);
        norm_heads(want_k, gk_norm, eps);
        ops::rope(want_q, positions, freq, p.factor);
        ops::rope(want_k, positions, freq, p.factor);
        ops::write_kv_cache(want_k, gv, slots, want_kc, want_vc);
        const std::vector<float> wq = want_q.to_floats(), wkc = want_kc.to_floats(), wvc = want_vc.to_floats();

        Tensor q = p.gpu_nan({p.n, p.nh, p.hd}), kc = p.gpu_nan(p.cache_shape()), vc = p.gpu_nan(p.cache_shape());
        ops::rope_write_kv_cache_fused(gqkv, positions, freq, p.factor, slots, q, kc, vc, opts);
        expect_same_bits(q.to_floats(), wq, what + " fused q");
        expect_same_bits(kc.to_floats(), wkc, what + " fused k_cache");
        expect_same_bits(vc.to_floats(), wvc, what + " fused v_cache");

        Tensor sq = host.slice(1, 0, p.nh).contiguous().to(kGpu);
        const Tensor sk = host.slice(1, p.nh, p.nh + p.nkv).contiguous().to(kGpu);
        Tensor skc = p.gpu_nan(p.cache_shape()), svc = p.gpu_nan(p.cache_shape());
        ops::rope_write_kv_cache(sq, sk, gv, positions, freq, p.factor, slots, skc, svc, opts);
        expect_same_bits(sq.to_floats(), wq, what + " split q");
        expect_same_bits(skc.to_floats(), wkc, what + " split k_cache");
        expect_same_bits(svc.to_floats(), wvc, what + " split v_cache");

        if (per_token) {  // one call per sequence, its row as a 1-D inv_freq
          Tensor pq = p.gpu_nan({p.n, p.nh, p.hd}), pkc = p.gpu_nan(p.cache_shape()), pvc = p.gpu_nan(p.cache_shape());
          for (size_t s = 0; s + 1 < p.seq_start.size(); ++s) {
            const int64_t lo = p.seq_start[s], hi = p.seq_start[s + 1];
            Tensor qs = pq.slice(0, lo, hi);
            ops::rope_write_kv_cache_fused(gqkv.slice(0, lo, hi), positions.slice(0, lo, hi),
                                           Tensor::from_floats({p.r}, p.seq_freq[s]).to(kGpu), p.factor,
                                           slots.slice(0, lo, hi), qs, pkc, pvc, opts);
          }
          expect_same_bits(pq.to_floats(), wq, what + " per-sequence q");
          expect_same_bits(pkc.to_floats(), wkc, what + " per-sequence k_cache");
          expect_same_bits(pvc.to_floats(), wvc, what + " per-sequence v_cache");
        }
      }
}

TEST(CudaRopeWriteKvCacheFused, RejectsBadNormsAndFrequencies) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  // Three tokens, 4 query heads over 2 KV heads, head_dim 8, 3 blocks of 4 slots.
  const auto bf = [](const Shape& s) { return Tensor::zeros(s, DType::BF16, kGpu); };
  Tensor qkv = bf({3, 8, 8}), q = bf({3, 4, 8}), kc = bf({3, 4, 2, 8}), vc = bf({3, 4, 2, 8});
  const Tensor pos = test::i32_tensor({3}, {0, 1, 2}).to(kGpu), slots = test::i32_tensor({3}, {5, -1, 11}).to(kGpu);
  const Tensor freq = Tensor::zeros({3, 4}, DType::F32, kGpu);
  const Tensor qn = Tensor::zeros({8}, DType::F32, kGpu), kn = bf({8});
  const auto run = [&](const Tensor& freq_, const ops::RopeOptions& o) {
    ops::rope_write_kv_cache_fused(qkv, pos, freq_, 1.0f, slots, q, kc, vc, o);
  };
  const std::string op = "rope_write_kv_cache_fused";
  EXPECT_NO_THROW(run(freq, {&qn, &kn, 1e-6f}));
  EXPECT_NO_THROW(run(Tensor::zeros({4}, DType::F32, kGpu), {&qn, &kn, 1e-6f}));
  using test::expect_op_error;
  expect_op_error(op, "inv_freq", [&] { run(Tensor::zeros({3, 4}, DType::F32), {}); });  // on the CPU
  expect_op_error(op, "inv_freq", [&] { run(Tensor::zeros({2, 4}, DType::F32, kGpu), {}); });
  const Tensor cpu_norm = Tensor::zeros({8}, DType::F32), f16_norm = Tensor::zeros({8}, DType::F16, kGpu);
  expect_op_error(op, "q_norm", [&] { run(freq, {&cpu_norm, &kn, 1e-6f}); });
  expect_op_error(op, "k_norm", [&] { run(freq, {&qn, &cpu_norm, 1e-6f}); });
  expect_op_error(op, "k_norm", [&] { run(freq, {&qn, &f16_norm, 1e-6f}); });  // F16: CPU only
  expect_op_error(op, "k_norm", [&] { run(freq, {&qn, nullptr, 1e-6f}); });
  Tensor gk = bf({3, 2, 8}), gv = bf({3, 2, 8});
  expect_op_error("rope_write_kv_cache", "q_norm", [&] {
    ops::rope_write_kv_cache(q, gk, gv, pos, freq, 1.0f, slots, kc, vc, {&f16_norm, &kn, 1e-6f});
  });
}

// An engine's steps on the GPU: each step rotates and stores its tokens
// with rope_write_kv_cache, then attends; the output must match the CPU op
// run on the GPU's own q and cache (read back), and the cache must hold the
// rotated rows of every earlier step.
TEST(CudaAttention, ChunkedPrefillThenDecodeSteps) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t nh = 16, nkv = 4, hd = 128, bs = 16, r = 64;
  const int64_t num_blocks = 64;
  // Two sequences: A prefills 300 tokens in chunks of 128, B 50 tokens at
  // once; then both decode 3 tokens.
  std::vector<std::vector<SeqSpec>> steps = {
      {{128, 128}, {50, 50}}, {{128, 256}, {1, 51}}, {{44, 300}, {1, 52}}, {{1, 301}, {1, 53}}, {{1, 302}, {1, 54}}};
  std::mt19937 rng(10000);
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int64_t width = 24;
  std::vector<int32_t> table(size_t(2 * width), -1);
  for (int64_t b = 0; b < 20; ++b) table[size_t(b)] = ids[size_t(b)];              // A: 20 blocks
  for (int64_t b = 0; b < 4; ++b) table[size_t(width + b)] = ids[size_t(20 + b)];  // B: 4 blocks
  Tensor kc = Tensor::zeros({num_blocks, bs, nkv, hd}, DType::BF16, kGpu);
  Tensor vc = Tensor::zeros({num_blocks, bs, nkv, hd}, DType::BF16, kGpu);
  const Tensor inv_freq = Tensor::from_floats({r}, inv_freqs(r, hd)).to(kGpu);
  const Tensor bt = test::i32_tensor({2, width}, table).to(kGpu);
  const float scale = 1.0f / std::sqrt(float(hd));
  for (size_t step = 0; step < steps.size(); ++step) {
    std::vector<int32_t> starts = {0}, lens, pos, slots;
    int64_t max_q = 0, max_ctx = 0;
    for (size_t s = 0; s < 2; ++s) {
      const SeqSpec& sp = steps[step][s];
      for (int64_t p = sp.ctx - sp.n_q; p < sp.ctx; ++p) {
        pos.push_back(int32_t(p));
        slots.push_back(table[size_t(int64_t(s) * width + p / bs)] * int32_t(bs) + int32_t(p % bs));
      }
      starts.push_back(int32_t(starts.back() + sp.n_q));
      lens.push_back(int32_t(sp.ctx));
      max_q = std::max(max_q, sp.n_q);
      max_ctx = std::max(max_ctx, sp.ctx);
    }
    const int64_t n = starts.back();
    Tensor q = Tensor::empty({n, nh, hd}, DType::F32), k = Tensor::empty({n, nkv, hd}, DType::F32);
    Tensor v = Tensor::empty({n, nkv, hd}, DType::F32);
    fill_uniform(q.data_as<float>(), q.numel(), rng, -2.0f, 2.0f);
    fill_uniform(k.data_as<float>(), k.numel(), rng, -2.0f, 2.0f);
    fill_uniform(v.data_as<float>(), v.numel(), rng, -1.0f, 1.0f);
    Tensor gq = q.to_dtype(DType::BF16).to(kGpu);
    ops::rope_write_kv_cache(gq, k.to_dtype(DType::BF16).to(kGpu), v.to_dtype(DType::BF16).to(kGpu),
                             test::i32_tensor({n}, pos).to(kGpu), inv_freq, 1.0f, test::i32_tensor({n}, slots).to(kGpu),
                             kc, vc);
    Tensor out = Tensor::empty({n, nh, hd}, DType::BF16, kGpu);
    const Tensor qs = test::i32_tensor({3}, starts), cl = test::i32_tensor({2}, lens);
    ops::paged_attention(gq, kc, vc, qs.to(kGpu), cl.to(kGpu), bt, scale, {max_q, max_ctx, 0}, out);

    // The CPU on the GPU's rotated q and cache (BF16 values, exact in F32).
    Batch b;
    b.seqs = steps[step];
    b.bs = bs, b.nh = nh, b.nkv = nkv, b.hd = hd, b.n_tokens = n, b.num_blocks = num_blocks, b.width = width;
    b.starts = starts, b.lens = lens, b.table = table;
    b.q = Tensor::from_floats({n, nh, hd}, gq.to_floats());
    b.k_cache = Tensor::from_floats({num_blocks, bs, nkv, hd}, kc.to_floats());
    b.v_cache = Tensor::from_floats({num_blocks, bs, nkv, hd}, vc.to_floats());
    expect_matches(out.to_floats(), cpu_expected(b, scale), fmt::format("step {}", step));
    // This step's rows are in the cache, rotated as the CPU rotates them.
    Tensor want_k = k.to(kCpu);
    ops::rope(want_k, test::i32_tensor({n}, pos), inv_freq.to(kCpu), 1.0f);
    const std::vector<float> cache_k = b.k_cache.to_floats(), cache_v = b.v_cache.to_floats();
    const std::vector<float> wk = want_k.to_floats(), wv = v.to_floats();
    size_t bad = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t e = 0; e < nkv * hd; ++e) {
        const float got_k = cache_k[size_t(slots[size_t(t)] * nkv * hd + e)];
        const float got_v = cache_v[size_t(slots[size_t(t)] * nkv * hd + e)];
        const float want = round_bf16(wk[size_t(t * nkv * hd + e)]);
        bad += std::fabs(got_k - want) > std::ldexp(std::fabs(want), -7);
        bad += got_v != wv[size_t(t * nkv * hd + e)];
      }
    EXPECT_EQ(bad, 0u) << "step " << step << " cache rows";
  }
}

}  // namespace
}  // namespace kite
