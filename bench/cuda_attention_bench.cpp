// CUDA paged attention (BF16, block_size 16, 32 query heads over 8 KV heads,
// head_dim 128):
//   decode at batch 1/64/256 x context 512/2048/8192: K+V bytes read per
//     second, and that as a share of the device's copy bandwidth (measured
//     here once: a device-to-device copy, bytes read + written per second);
//     calls run with trusted indices (no host-side index checks), as in the
//     model's forward;
//   prefill of one fresh 512- and 4096-token sequence: causal TFLOP/s
//     (4 * head_dim * n_heads * sum_i (i + 1)), and that as a share of the
//     ~800 TFLOP/s BF16 dense peak of an H100/H200 SXM.
// Builds without CUDA; without a CUDA device every benchmark is skipped.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/ops/paged_attention.h"
#include "backend/ops/trusted.h"
#include "core/tensor.h"

namespace kite {
namespace {

const Device kGpu{DeviceKind::CUDA, 0};
constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16;
constexpr double kBf16PeakTflops = 800.0;
constexpr int kCallsPerIteration = 20;  // back-to-back launches per timed iteration

using Clock = std::chrono::steady_clock;

// A BF16 device tensor of the given shape holding values in [-1, 1): a
// random 8 MiB pattern uploaded once and repeated with device copies.
Tensor random_device(const Shape& shape, uint32_t seed) {
  const int64_t n = shape_numel(shape), chunk = std::min<int64_t>(n, int64_t(4) << 20);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(chunk));
  for (float& x : v) x = d(rng);
  const Tensor pattern = Tensor::from_floats({chunk}, v).to_dtype(DType::BF16).to(kGpu);
  Tensor t = Tensor::empty(shape, DType::BF16, kGpu);
  Tensor flat = t.reshape({n});
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = std::min(chunk, n - i);
    flat.slice(0, i, i + m).copy_from(pattern.slice(0, 0, m));
  }
  return t;
}

// Device-to-device copy bandwidth, (read + write) bytes per second; once.
double copy_bandwidth() {
  static const double bw = [] {
    const int64_t n = int64_t(1) << 30;  // 1 GiB each way
    Tensor a = Tensor::zeros({n}, DType::U8, kGpu), b = Tensor::empty({n}, DType::U8, kGpu);
    b.copy_from(a);
    synchronize(kGpu);
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = Clock::now();
      for (int i = 0; i < 4; ++i) b.copy_from(a);
      synchronize(kGpu);
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      best = std::max(best, 4.0 * 2.0 * double(n) / s);
    }
    return best;
  }();
  return bw;
}

struct Problem {
  Tensor q, k_cache, v_cache, query_start, context_lens, block_tables, out;
  ops::PagedAttentionHints hints;
};

// n_seqs sequences with n_q queries each over ctx keys; every sequence's
// blocks are scattered over the cache at random.
Problem make_problem(int64_t n_seqs, int64_t n_q, int64_t ctx) {
  Problem p;
  const int64_t per_seq = (ctx + kBlock - 1) / kBlock, num_blocks = n_seqs * per_seq;
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  std::vector<int32_t> starts(static_cast<size_t>(n_seqs + 1)), lens(static_cast<size_t>(n_seqs), int32_t(ctx));
  for (int64_t s = 0; s <= n_seqs; ++s) starts[size_t(s)] = int32_t(s * n_q);
  const auto upload = [](const Shape& shape, const std::vector<int32_t>& v) {
    Tensor t = Tensor::empty(shape, DType::I32);
    std::copy(v.begin(), v.end(), t.data_as<int32_t>());
    return t.to(kGpu);
  };
  p.q = random_device({n_seqs * n_q, kHeads, kHeadDim}, 1);
  p.k_cache = random_device({num_blocks, kBlock, kKvHeads, kHeadDim}, 2);
  p.v_cache = random_device({num_blocks, kBlock, kKvHeads, kHeadDim}, 3);
  p.query_start = upload({n_seqs + 1}, starts);
  p.context_lens = upload({n_seqs}, lens);
  p.block_tables = upload({n_seqs, per_seq}, ids);
  p.out = Tensor::empty({n_seqs * n_q, kHeads, kHeadDim}, DType::BF16, kGpu);
  p.hints.max_query_len = n_q;
  p.hints.max_context_len = ctx;
  return p;
}

// Seconds per call, timed over kCallsPerIteration back-to-back calls.
template <typename Fn>
void timed_loop(benchmark::State& state, Fn&& call) {
  call();  // warm-up (kernel attributes, workspace)
  synchronize(kGpu);
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int i = 0; i < kCallsPerIteration; ++i) call();
    synchronize(kGpu);
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count() / kCallsPerIteration);
  }
}

// Under ops::TrustedIndices with both hints given, as the model's forward
// and its CUDA graphs run it: the kernels alone, without the host-side
// check of the index arrays (a device-to-host copy and a sync per call).
void run(Problem& p) {
  const ops::TrustedIndices trusted;  // make_problem's indices are valid
  ops::paged_attention(p.q, p.k_cache, p.v_cache, p.query_start, p.context_lens, p.block_tables,
                       1.0f / std::sqrt(float(kHeadDim)), p.hints, p.out);
}

void BM_CopyBandwidth(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const double bw = copy_bandwidth();
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["copy_TB/s"] = bw / 1e12;
  state.SetLabel(device_description(kGpu));
}

void BM_Decode(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), ctx = state.range(1);
  Problem p = make_problem(batch, 1, ctx);
  timed_loop(state, [&] { run(p); });
  const double bytes = 2.0 * double(batch * ctx * kKvHeads * kHeadDim) * 2.0;  // K and V, BF16
  state.counters["KV_TB/s"] = benchmark::Counter(bytes / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_copy_bw"] =
      benchmark::Counter(bytes / copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Prefill(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t n = state.range(0);
  Problem p = make_problem(1, n, n);
  timed_loop(state, [&] { run(p); });
  const double flops = 4.0 * kHeadDim * kHeads * double(n) * double(n + 1) / 2.0;
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_peak"] =
      benchmark::Counter(flops / (kBf16PeakTflops * 1e12), benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_CopyBandwidth)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)
    ->ArgsProduct({{1, 64, 256}, {512, 2048, 8192}})
    ->ArgNames({"batch", "ctx"})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Prefill)->Arg(512)->Arg(4096)->ArgName("tokens")->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kite

BENCHMARK_MAIN();
