// CUDA's weight-only quantized linear ("cuda_wq_a16", backend/cuda/
// linear_wq_kernel.cpp) at Llama-3-8B shapes, m = 1, 16, 64, 256 tokens:
// Int4 g128 (symmetric, and asymmetric with act-order) and Int8 per channel,
// next to the BF16 cuBLASLt GEMM of the same shape (ops::linear). Reported:
// time per call, and the weight traffic per second (the packed weight's
// bytes: codes, scales, zeros, permutation / time) against the device's
// copy bandwidth: a GEMV (m <= 16 here) reads its weight once, so that ratio
// is its fraction of the memory roofline. Larger m runs dequantize + cuBLASLt
// (see the kernel's file comment for the crossover). Builds everywhere;
// without a CUDA device (or a CUDA build) every benchmark is skipped.
//
// Timing as bench/cuda_dense_bench.cpp: CUDA events around R back-to-back
// calls queued behind a 256 MiB device copy; host time per call separately.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/linear.h"
#include "backend/ops/ops.h"
#include "core/parallel.h"
#include "core/quant_weight.h"
#include "core/tensor.h"

#if __has_include(<cuda_runtime.h>)
#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"
#define KITE_BENCH_HAVE_CUDA 1
#else
#define KITE_BENCH_HAVE_CUDA 0
#endif

namespace kite {
namespace {

const Device kGpu{DeviceKind::CUDA, 0};

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform [-1, 1) BF16 values made on the host, copied to the GPU.
Tensor random_gpu(const Shape& shape, uint64_t seed) {
  Tensor h = Tensor::empty(shape, DType::F32);
  float* p = h.data_as<float>();
  parallel_for(h.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = float(double(splitmix(seed * 7919 + uint64_t(i)) >> 40) / (1 << 23)) - 1;
  });
  return h.to_dtype(DType::BF16).to(kGpu);
}

struct Row {
  double us = 0, host_us = 0, weight_gbps = 0;
};
std::map<std::string, Row> g_rows;  // by "shape m scheme"
double g_copy_gbps = 0;

#if KITE_BENCH_HAVE_CUDA
void check(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

template <typename Fn>
std::pair<double, double> time_launches(int reps, Fn&& fn) {
  static Tensor backlog_src = Tensor::zeros({int64_t(256) << 20}, DType::U8, kGpu);
  static Tensor backlog_dst = Tensor::empty({int64_t(256) << 20}, DType::U8, kGpu);
  cudaStream_t s = cuda::current_stream(0);
  cudaEvent_t a, b;
  check(cudaEventCreate(&a));
  check(cudaEventCreate(&b));
  backlog_dst.copy_from(backlog_src);
  check(cudaEventRecord(a, s));
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  const auto t1 = std::chrono::steady_clock::now();
  check(cudaEventRecord(b, s));
  check(cudaEventSynchronize(b));
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return {double(ms) * 1e-3 / reps, std::chrono::duration<double>(t1 - t0).count() / reps};
}

double measure_copy_gbps() {
  const int64_t bytes = int64_t(1) << 30;
  Tensor src = Tensor::zeros({bytes}, DType::U8, kGpu), dst = Tensor::empty({bytes}, DType::U8, kGpu);
  dst.copy_from(src);
  synchronize(kGpu);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) best = std::min(best, time_launches(4, [&] { dst.copy_from(src); }).first);
  return 2.0 * double(bytes) / best / 1e9;
}
#else
template <typename Fn>
std::pair<double, double> time_launches(int, Fn&&) {
  return {0, 0};
}
double measure_copy_gbps() { return 0; }
#endif

bool skip_without_cuda(benchmark::State& state) {
  if (KITE_BENCH_HAVE_CUDA && cuda_available()) return false;
  state.SkipWithError("no CUDA device (or a build without CUDA)");
  return true;
}

struct Shape2 {
  const char* name;
  int64_t in, out;
};
// Llama-3-8B: fused qkv, o, fused gate_up, down.
const Shape2 kShapes[] = {{"qkv", 4096, 6144}, {"o", 4096, 4096}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}};

enum class Scheme { Bf16 = 0, Int4G128 = 1, Int4G128AsymActOrder = 2, Int8PerChannel = 3 };
const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::Bf16: return "bf16 cublaslt";
    case Scheme::Int4G128: return "int4 g128";
    case Scheme::Int4G128AsymActOrder: return "int4 g128 asym act-order";
    case Scheme::Int8PerChannel: return "int8 per-channel";
  }
  return "?";
}

// A random weight of `scheme` in Kite's layout (core/quant_weight.h).
QuantWeight random_weight(Scheme scheme, int64_t out, int64_t in, uint64_t seed) {
  QuantWeight w;
  w.out = out;
  w.in = in;
  if (scheme == Scheme::Bf16) {
    w.dense = Tensor::empty({out, in}, DType::BF16);
    auto* p = w.dense.data_as<uint16_t>();
    parallel_for(out * in, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        p[i] = f32_to_bf16(float(double(splitmix(seed + uint64_t(i)) >> 40) / (1 << 23)) - 1);
    });
    return w;
  }
  const bool int8 = scheme == Scheme::Int8PerChannel;
  w.scheme = int8 ? QuantScheme::Int8 : QuantScheme::Int4;
  w.group = int8 ? in : 128;
  w.qdata = int8 ? Tensor::empty({out, in}, DType::I8) : Tensor::empty({out, in / 2}, DType::U8);
  auto* q = static_cast<uint8_t*>(w.qdata.data());
  parallel_for(int64_t(w.qdata.nbytes()), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint8_t r = uint8_t(splitmix(seed + uint64_t(i)));
      q[i] = int8 && r == 0x80 ? 0x81 : r;  // Int8 codes -127..127
    }
  });
  const int64_t groups = in / w.group;
  w.scales = Tensor::from_floats({out, groups}, std::vector<float>(size_t(out * groups), 0.01f));
  if (!int8) {
    const bool asym = scheme == Scheme::Int4G128AsymActOrder;
    std::vector<float> z(size_t(out * groups), 8.0f);
    if (asym)
      for (size_t i = 0; i < z.size(); ++i) z[i] = float(splitmix(seed ^ i) % 1500) / 100.0f;
    w.zeros = Tensor::from_floats({out, groups}, z);
    if (asym) {
      std::vector<int32_t> p(static_cast<size_t>(in));
      std::iota(p.begin(), p.end(), 0);
      std::shuffle(p.begin(), p.end(), std::mt19937_64(seed));
      w.perm = Tensor::empty({in}, DType::I32);
      std::copy(p.begin(), p.end(), w.perm.data_as<int32_t>());
    }
  }
  return w;
}

void BM_Linear(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  const Shape2& s = kShapes[state.range(0)];
  const auto scheme = Scheme(state.range(1));
  const int64_t m = state.range(2);
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Linear>> linears;  // reused across m
  auto& lin = linears[{state.range(0), state.range(1)}];
  if (!lin)
    lin = std::make_unique<Linear>(fmt::format("{} {}", s.name, scheme_name(scheme)),
                                   random_weight(scheme, s.out, s.in, 100 + uint64_t(state.range(0))), Tensor(), kGpu,
                                   DType::BF16);
  Tensor x = random_gpu({m, s.in}, 7);
  Tensor y = Tensor::empty({m, s.out}, DType::BF16, kGpu);
  lin->forward(x, y);  // cuBLASLt plan
  synchronize(kGpu);
  double dev = 0, host = 0;
  for (auto _ : state) {
    auto [d, h] = time_launches(10, [&] { lin->forward(x, y); });
    state.SetIterationTime(d);
    dev += d;
    host += h;
  }
  Row r;
  const double t = dev / double(state.iterations());
  r.us = t * 1e6;
  r.host_us = host / double(state.iterations()) * 1e6;
  r.weight_gbps = double(lin->bytes()) / t / 1e9;
  g_rows[fmt::format("{:<8} m={:>4} {}", s.name, m, scheme_name(scheme))] = r;
  state.counters["weight_GB/s"] = r.weight_gbps;
  state.counters["host_us"] = r.host_us;
  state.SetLabel(fmt::format("{} [{} x {}] @ [{} x {}]^T {} ({})", s.name, m, s.in, s.out, s.in, scheme_name(scheme),
                             lin->kernel_name()));
}

void linear_args(benchmark::internal::Benchmark* b) {
  for (int64_t s = 0; s < int64_t(std::size(kShapes)); ++s)
    for (int64_t scheme = 0; scheme < 4; ++scheme)
      for (int64_t m : {1, 16, 64, 256}) b->Args({s, scheme, m});
  b->ArgNames({"shape", "scheme", "m"});
  b->UseManualTime();
  b->MinTime(0.1);
}
BENCHMARK(BM_Linear)->Apply(linear_args);

void print_summary() {
  if (g_rows.empty()) return;
  std::printf("\n%s\n", device_description(kGpu).c_str());
  std::printf("device-to-device copy bandwidth (read + write): %.0f GB/s\n\n", g_copy_gbps);
  std::printf("| shape, m, weight | us | weight GB/s | %% of copy bw | vs bf16 | host us |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const auto& [k, r] : g_rows) {
    const std::string bf16_key = k.substr(0, k.find("m=") + 6) + " " + scheme_name(Scheme::Bf16);
    const auto it = g_rows.find(bf16_key);
    const double speedup = it != g_rows.end() && r.us > 0 ? it->second.us / r.us : 0;
    std::printf("| %s | %.1f | %.0f | %.1f%% | %.2fx | %.1f |\n", k.c_str(), r.us, r.weight_gbps,
                g_copy_gbps > 0 ? 100 * r.weight_gbps / g_copy_gbps : 0, speedup, r.host_us);
  }
}

}  // namespace
}  // namespace kite

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (KITE_BENCH_HAVE_CUDA && kite::cuda_available()) kite::g_copy_gbps = kite::measure_copy_gbps();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  kite::print_summary();
  return 0;
}
