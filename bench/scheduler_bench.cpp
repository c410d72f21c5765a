// The scheduler's own cost per step with 256 running decodes (goal: under
// 100 us, so the host never idles a GPU): schedule() + finish_step() +
// appending each sampled token, with block allocation and prefix-cache
// hashing as in the engine, no model.
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "engine/scheduler.h"

namespace {

void BM_SchedulerStep256Decodes(benchmark::State& state) {
  const int64_t n = state.range(0), prompt = 128, block = 16;
  kite::BlockManager bm(n * 64, block, /*enable_prefix_caching=*/true);
  kite::SchedulerConfig cfg;
  cfg.max_num_seqs = 256;
  cfg.max_num_batched_tokens = 8192;
  kite::Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<kite::Sequence>> seqs;
  for (int64_t i = 0; i < n; ++i) {
    auto s = std::make_unique<kite::Sequence>();
    s->id = uint64_t(i);
    s->arrival = uint64_t(i);
    for (int64_t t = 0; t < prompt; ++t) s->tokens.push_back(int32_t((i * 7919 + t * 31) % 30000));
    s->num_prompt_tokens = prompt;
    sched.add(s.get());
    seqs.push_back(std::move(s));
  }
  auto step = [&] {
    kite::SchedulerOutput out = sched.schedule();
    sched.finish_step(out);
    for (const auto& c : out.chunks) c.seq->tokens.push_back(int32_t(c.seq->num_tokens() % 30000));
    return out.chunks.size();
  };
  while (step() != size_t(n) || sched.num_waiting() > 0) {
  }  // prefill everything first (budget-limited steps)
  int64_t steps = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(step());
    if (++steps % (48 * block) == 0) {  // keep sequences from outgrowing the pool
      state.PauseTiming();
      for (auto& s : seqs) {
        sched.remove(s.get());
        s->tokens.resize(size_t(prompt));
        sched.add(s.get());
      }
      while (step() != size_t(n) || sched.num_waiting() > 0) {
      }
      state.ResumeTiming();
    }
  }
  state.counters["seqs"] = double(n);
}
BENCHMARK(BM_SchedulerStep256Decodes)->Arg(256)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
