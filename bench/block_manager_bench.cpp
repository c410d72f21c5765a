// One decode step of the KV-block bookkeeping for 256 running sequences:
// per sequence, allocate_slots for its next token (a new block every
// block_size steps) and cache_full_blocks over its computed tokens (hashing
// each block as it fills). Lengths are staggered; a sequence that reaches
// kMaxLen is freed and replaced by a new request (prefix hit on a shared
// system prompt, prefill of its own prompt), so in steady state the pool
// recycles blocks and evicts cached ones. Time per iteration = one step.
// Args: block size, prefix caching.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <vector>

#include "engine/block_manager.h"

namespace kite {
namespace {

constexpr int64_t kSeqs = 256, kShared = 64, kPrompt = 128, kMaxLen = 1024;

struct Seq {
  BlockTable table;
  std::vector<int32_t> tokens;
  int64_t pos = 0;  // computed tokens
};

void BM_DecodeStep(benchmark::State& state) {
  const int64_t block_size = state.range(0);
  const bool caching = state.range(1) != 0;
  BlockManager bm(kSeqs * ((kMaxLen + block_size - 1) / block_size) * 11 / 10, block_size, caching);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, 150000);
  std::vector<int32_t> arena(size_t(1) << 20);
  for (int32_t& t : arena) t = token(rng);
  std::vector<BlockCopy> copies;
  size_t next_request = 0;
  int64_t restarts = 0;

  auto start_request = [&](Seq& s, int64_t upto) {
    bm.free(s.table);
    s.tokens.assign(arena.begin(), arena.begin() + kShared);  // the shared system prompt
    const size_t off = kShared + (next_request++ * 7919) % (arena.size() - kMaxLen - kShared);
    s.tokens.insert(s.tokens.end(), arena.begin() + ptrdiff_t(off), arena.begin() + ptrdiff_t(off + kMaxLen - kShared));
    const int64_t cached = bm.acquire_prefix(s.table, std::span(s.tokens).first(size_t(kPrompt)));
    if (!bm.allocate_slots(s.table, cached, upto, copies)) state.SkipWithError("pool too small");
    bm.cache_full_blocks(s.table, s.tokens, upto);
    s.pos = upto;
    ++restarts;
  };

  std::vector<Seq> seqs(static_cast<size_t>(kSeqs));
  for (int64_t i = 0; i < kSeqs; ++i) start_request(seqs[size_t(i)], kPrompt + i * (kMaxLen - kPrompt) / kSeqs);
  restarts = 0;
  for (auto _ : state) {
    for (Seq& s : seqs) {
      if (s.pos == kMaxLen) start_request(s, kPrompt);
      copies.clear();
      if (!bm.allocate_slots(s.table, s.pos, s.pos + 1, copies)) state.SkipWithError("pool too small");
      ++s.pos;
      bm.cache_full_blocks(s.table, s.tokens, s.pos);
    }
    benchmark::DoNotOptimize(copies.data());
  }
  state.counters["ns_per_seq"] = benchmark::Counter(double(state.iterations()) * double(kSeqs),
                                                    benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["restarts_per_step"] = double(restarts) / double(state.iterations());
  state.counters["hit_rate"] = bm.prefix_stats().hit_rate();
}

BENCHMARK(BM_DecodeStep)->ArgsProduct({{16, 32}, {1, 0}})->ArgNames({"block", "cache"});

}  // namespace
}  // namespace kite

BENCHMARK_MAIN();
