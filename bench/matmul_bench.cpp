// linear (y = x @ w^T) on the CPU for the reference model's shapes
// (hidden 384, FFN 1024, vocab 8192): decode (n = 1) reports the weight
// stream in GB/s, prefill (n = 128) the arithmetic in GFLOP/s.
// Args: n, k, m, weight dtype, SIMD level.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace kite {
namespace {

Tensor random(const Shape& shape, DType dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  Tensor t = Tensor::from_floats(shape, v);
  return dtype == DType::F32 ? t : t.to_dtype(dtype);
}

void BM_Linear(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const DType wt = DType(state.range(3));
  const auto level = cpu::SimdLevel(state.range(4));
  if (cpu::clamp_simd_level(level) != level) {
    state.SkipWithError("SIMD level not supported by this CPU");
    return;
  }
  Tensor x = random({n, k}, DType::F32, 1);
  Tensor w = random({m, k}, wt, 2);
  Tensor y = Tensor::empty({n, m}, DType::F32);
  for (auto _ : state) {
    cpu::linear(x, w, nullptr, y, level);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(fmt::format("{} {} threads={}", dtype_name(wt), cpu::simd_name(level), num_threads()));
  const double iters = double(state.iterations());
  state.counters["weight_GB"] = benchmark::Counter(double(w.nbytes()) * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP"] = benchmark::Counter(2.0 * double(n * k * m) * iters / 1e9, benchmark::Counter::kIsRate);
}

void linear_args(benchmark::internal::Benchmark* b) {
  const int64_t shapes[][2] = {{384, 1024}, {384, 384}, {1024, 384}, {384, 8192}};  // {k, m}
  for (int64_t n : {1, 128})
    for (auto [k, m] : shapes)
      for (DType wt : {DType::BF16, DType::F32, DType::F16})
        for (cpu::SimdLevel level : {cpu::SimdLevel::Avx512, cpu::SimdLevel::Avx2, cpu::SimdLevel::Scalar})
          b->Args({n, k, m, int64_t(wt), int64_t(level)});
  b->ArgNames({"n", "k", "m", "dtype", "simd"});
  b->UseRealTime();
}

BENCHMARK(BM_Linear)->Apply(linear_args);

void BM_Attention(benchmark::State& state) {
  // Reference model: 6 heads of 64, 2 KV heads.
  const int64_t n_q = state.range(0), ctx = state.range(1), nh = 6, nkv = 2, hd = 64;
  const auto level = cpu::simd_level();
  Tensor q = random({n_q, nh, hd}, DType::F32, 3);
  Tensor k = random({ctx, nkv, hd}, DType::F32, 4);
  Tensor v = random({ctx, nkv, hd}, DType::F32, 5);
  Tensor out = Tensor::empty({n_q, nh, hd}, DType::F32);
  for (auto _ : state) {
    cpu::attention(q, k, v, ctx - n_q, 0.125f, out, level);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(cpu::simd_name(level));
}

BENCHMARK(BM_Attention)->Args({1, 512})->Args({1, 2048})->Args({128, 128})->Args({512, 512})->UseRealTime();

}  // namespace
}  // namespace kite

BENCHMARK_MAIN();
