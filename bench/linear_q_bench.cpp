// linear_q (y = act(x) @ W^T from packed quantized weights) on the CPU next
// to the dense BF16 linear, for a 4096 x 4096 layer and the reference
// model's FFN up projection (in 384, out 1024). Decode (n = 1) reports the
// weight stream (codes, scales, zeros, perm) in GB/s, prefill (n = 64) the
// arithmetic in GFLOP/s. Args: n, in, out, scheme, SIMD level.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/parallel.h"
#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite {
namespace {

enum Scheme : int64_t { kBf16, kInt8, kInt8A8, kInt4, kInt4ActOrder, kNf4, kFp8, kFp8A8, kCount };
const char* const kNames[] = {"bf16",    "int8_channel", "int8_w8a8", "int4_g128", "int4_g128_actorder",
                              "nf4_b64", "fp8_channel",  "fp8_w8a8"};

Tensor random_f32(const Shape& shape, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = d(rng);
  return Tensor::from_floats(shape, v);
}

Tensor random_bytes(const Shape& shape, DType dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = t.data_as<uint8_t>();
  const size_t bytes = t.nbytes();
  for (size_t i = 0; i < bytes; ++i) p[i] = uint8_t(rng() & 0xfe);  // no fp8 NaN codes (0x7f, 0xff)
  return t;
}

// Random codes and scales straight in Kite's layouts (values don't matter for speed).
QuantWeight make_weight(Scheme s, int64_t out, int64_t in) {
  QuantWeight w;
  w.out = out;
  w.in = in;
  switch (s) {
    case kBf16: return QuantWeight::from_dense(random_f32({out, in}, 2, -1, 1).to_dtype(DType::BF16));
    case kInt8:
    case kInt8A8:
      w.scheme = QuantScheme::Int8;
      w.group = in;
      w.qdata = random_bytes({out, in}, DType::I8, 3);
      w.scales = random_f32({out, 1}, 4, 0.001f, 0.01f);
      w.act = s == kInt8A8 ? ActQuant::Int8Token : ActQuant::None;
      break;
    case kInt4:
    case kInt4ActOrder:
      w.scheme = QuantScheme::Int4;
      w.group = 128;
      w.qdata = random_bytes({out, in / 2}, DType::U8, 3);
      w.scales = random_f32({out, in / 128}, 4, 0.001f, 0.01f);
      w.zeros = random_f32({out, in / 128}, 5, 0.0f, 15.0f);
      if (s == kInt4ActOrder) {
        w.perm = Tensor::empty({in}, DType::I32);
        int32_t* p = w.perm.data_as<int32_t>();
        std::iota(p, p + in, 0);
        std::shuffle(p, p + in, std::mt19937(6));
      }
      break;
    case kNf4:
      w.scheme = QuantScheme::Nf4;
      w.group = 64;
      w.qdata = random_bytes({out, in / 2}, DType::U8, 3);
      w.scales = random_f32({out * in / 64}, 4, 0.01f, 0.1f);
      break;
    case kFp8:
    case kFp8A8:
      w.scheme = QuantScheme::Fp8;
      w.qdata = random_bytes({out, in}, DType::F8_E4M3, 3);
      w.scales = random_f32({out}, 4, 0.001f, 0.01f);
      w.act = s == kFp8A8 ? ActQuant::Fp8Token : ActQuant::None;
      break;
    case kCount: break;
  }
  w.validate("bench");
  return w;
}

void BM_LinearQ(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const auto scheme = Scheme(state.range(3));
  const auto level = cpu::SimdLevel(state.range(4));
  if (cpu::clamp_simd_level(level) != level) {
    state.SkipWithError("SIMD level not supported by this CPU");
    return;
  }
  const QuantWeight w = make_weight(scheme, out, in);
  Tensor x = random_f32({n, in}, 1, -1, 1);
  Tensor y = Tensor::empty({n, out}, DType::F32);
  for (auto _ : state) {
    if (w.quantized())
      cpu::linear_q(x, w, nullptr, y, level);
    else
      cpu::linear(x, w.dense, nullptr, y, level);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(fmt::format("{} {} {:.2f} bits/weight threads={}", kNames[scheme], cpu::simd_name(level),
                             w.bits_per_weight(), num_threads()));
  const double iters = double(state.iterations());
  state.counters["weight_GB"] =
      benchmark::Counter(double(w.storage_bytes()) * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP"] = benchmark::Counter(2.0 * double(n * in * out) * iters / 1e9, benchmark::Counter::kIsRate);
}

void linear_q_args(benchmark::internal::Benchmark* b) {
  const int64_t shapes[][2] = {{4096, 4096}, {384, 1024}};  // {in, out}
  for (int64_t n : {1, 64})
    for (auto [in, out] : shapes)
      for (int64_t s = 0; s < kCount; ++s)
        for (cpu::SimdLevel level : {cpu::SimdLevel::Avx512, cpu::SimdLevel::Avx2, cpu::SimdLevel::Scalar})
          if (level != cpu::SimdLevel::Scalar || n == 1) b->Args({n, in, out, s, int64_t(level)});
  b->ArgNames({"n", "in", "out", "scheme", "simd"});
  b->UseRealTime();
}

BENCHMARK(BM_LinearQ)->Apply(linear_q_args);

}  // namespace
}  // namespace kite

BENCHMARK_MAIN();
