// ops::sample_rows on CUDA at Llama 3's vocabulary (128256): m = 1 (decode
// of one sequence) and m = 256 (a full decode batch), greedy (the argmax
// kernel) and temperature with top-p / top-k / min-p mixes, with and without
// logprobs. Wall time per call (metadata upload, kernel, results back), µs;
// for comparison, the copy of the same logits to the host that the engine made
// before (copy_to_host). Without a CUDA device every benchmark is skipped.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/ops/ops.h"
#include "core/tensor.h"

namespace kite {
namespace {

const Device kGpu{DeviceKind::CUDA, 0};
constexpr int64_t kVocab = 128256;

Tensor gpu_logits(int64_t m) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(size_t(m * kVocab));
  for (float& x : v) x = nd(rng);
  return Tensor::from_floats({m, kVocab}, v).to(kGpu);
}

enum Mix { kGreedy, kTemperature, kTopP, kTopK, kTopKTopP, kMinP, kTopPLogprobs };

void BM_Sample(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t m = state.range(0);
  const Mix mix = Mix(state.range(1));
  Tensor x = gpu_logits(m);
  ops::SampleBatch b;
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int64_t r = 0; r < m; ++r) {
    ops::SampleRow row;
    row.params.temperature = mix == kGreedy ? 0.0f : 0.8f;
    if (mix == kTopP || mix == kTopKTopP || mix == kTopPLogprobs) row.params.top_p = 0.9f;
    if (mix == kTopK || mix == kTopKTopP) row.params.top_k = 50;
    if (mix == kMinP) row.params.min_p = 0.05f;
    if (mix == kTopPLogprobs) row.num_logprobs = 5;
    row.uniform = u(rng);
    b.rows.push_back(row);
  }
  for (int i = 0; i < 3; ++i) ops::sample_rows(x, b);  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(ops::sample_rows(x, b));
  state.counters["us_per_call"] =
      benchmark::Counter(double(state.iterations()) * 1e-6, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_CopyToHost(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  Tensor x = gpu_logits(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(x.to(kCpu));
  state.counters["us_per_call"] =
      benchmark::Counter(double(state.iterations()) * 1e-6, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void mixes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "mix"});
  for (int64_t m : {1, 256})
    for (int mix = kGreedy; mix <= kTopPLogprobs; ++mix) b->Args({m, mix});
}

BENCHMARK(BM_Sample)->Apply(mixes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CopyToHost)->Arg(1)->Arg(256)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kite

BENCHMARK_MAIN();
