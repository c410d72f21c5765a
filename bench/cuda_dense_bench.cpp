// The CUDA dense kernels at Llama-3-8B shapes: BF16 GEMMs (cuBLASLt through
// ops::linear) in TFLOP/s against the H100/H200 SXM dense BF16 peak, the
// weight stream of m = 1 (decode) against the device's copy bandwidth, and
// the norms and SwiGLU in GB/s. Builds everywhere; without a CUDA device (or
// a CUDA build) every benchmark is skipped at run time.
//
// Timing: CUDA events on the device's stream around R back-to-back launches,
// queued behind a 256 MiB device copy so the GPU never waits for the host; the
// host's own cost per launch is reported separately (host_us).
// Copy bandwidth: a 1 GiB cudaMemcpyAsync device-to-device, (read + write
// bytes) / time, measured once. A GEMV reads its weight once, so weight
// bytes / time over that figure is the fraction of the memory roofline.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/ops/ops.h"
#include "core/dtype.h"
#include "core/parallel.h"
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
// NVIDIA's datasheet figure for H100/H200 SXM, dense BF16 with F32 accumulation.
constexpr double kPeakTflops = 989.0;

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform [-1, 1) BF16 values made on the host, copied to the GPU.
Tensor random_gpu(const Shape& shape, uint64_t seed, DType dtype = DType::BF16) {
  Tensor h = Tensor::empty(shape, DType::F32);
  float* p = h.data_as<float>();
  parallel_for(h.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = float(double(splitmix(seed * 7919 + uint64_t(i)) >> 40) / (1 << 23)) - 1;
  });
  return (dtype == DType::F32 ? h : h.to_dtype(dtype)).to(kGpu);
}

struct GemmRow {
  double us = 0, host_us = 0, tflops = 0, weight_gbps = 0;
};
struct BwRow {
  double us = 0, host_us = 0, gbps = 0;
};
std::map<std::string, GemmRow> g_gemm;  // by "name m"
std::map<std::string, BwRow> g_bw;
double g_copy_gbps = 0;

#if KITE_BENCH_HAVE_CUDA
void check(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

// Device time per launch of `fn` (R launches between two events, queued
// behind a backlog copy) and host time per launch.
template <typename Fn>
std::pair<double, double> time_launches(int reps, Fn&& fn) {
  // ~0.2 ms of copying: longer than the host needs to queue the launches.
  static Tensor backlog_src = Tensor::zeros({int64_t(256) << 20}, DType::U8, kGpu);
  static Tensor backlog_dst = Tensor::empty({int64_t(256) << 20}, DType::U8, kGpu);
  cudaStream_t s = cuda::current_stream(0);
  cudaEvent_t a, b;
  check(cudaEventCreate(&a));
  check(cudaEventCreate(&b));
  backlog_dst.copy_from(backlog_src);  // device to device: queued, not waited for
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
  dst.copy_from(src);  // warm-up
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

struct GemmShape {
  const char* name;
  int64_t k, n;  // in, out features
  DType y;
};
// Llama-3-8B: fused qkv (32 + 2 x 8 heads of 128), o, fused gate_up, down,
// and the lm_head (F32 logits).
const GemmShape kGemms[] = {{"qkv", 4096, 6144, DType::BF16},
                            {"o", 4096, 4096, DType::BF16},
                            {"gate_up", 4096, 28672, DType::BF16},
                            {"down", 14336, 4096, DType::BF16},
                            {"lm_head", 4096, 128256, DType::F32}};

void BM_Gemm(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  const GemmShape& g = kGemms[state.range(0)];
  const int64_t m = state.range(1);
  static std::map<int, Tensor> weights;  // one per shape, reused across m
  Tensor& w = weights[int(state.range(0))];
  if (!w.defined()) w = random_gpu({g.n, g.k}, 100 + uint64_t(state.range(0)));
  Tensor x = random_gpu({m, g.k}, 7);
  Tensor y = Tensor::empty({m, g.n}, g.y, kGpu);
  ops::linear(x, w, nullptr, y);  // plan, workspace
  synchronize(kGpu);
  const int reps = m >= 2048 ? 3 : 10;
  double dev = 0, host = 0;
  for (auto _ : state) {
    auto [d, h] = time_launches(reps, [&] { ops::linear(x, w, nullptr, y); });
    state.SetIterationTime(d);
    dev += d;
    host += h;
  }
  const double t = dev / double(state.iterations());
  GemmRow r;
  r.us = t * 1e6;
  r.host_us = host / double(state.iterations()) * 1e6;
  r.tflops = 2.0 * double(m) * double(g.n) * double(g.k) / t / 1e12;
  r.weight_gbps = double(w.nbytes()) / t / 1e9;
  g_gemm[fmt::format("{:<8} m={:>4}", g.name, m)] = r;
  state.counters["TFLOP/s"] = r.tflops;
  state.counters["weight_GB/s"] = r.weight_gbps;
  state.counters["host_us"] = r.host_us;
  state.SetLabel(fmt::format("{} [{} x {}] @ [{} x {}]^T -> {}", g.name, m, g.k, g.n, g.k, dtype_name(g.y)));
}

void gemm_args(benchmark::internal::Benchmark* b) {
  for (int64_t s = 0; s < int64_t(std::size(kGemms)); ++s)
    for (int64_t m : {1, 16, 256, 512, 4096}) b->Args({s, m});
  b->ArgNames({"shape", "m"});
  b->UseManualTime();
  b->MinTime(0.1);
}
BENCHMARK(BM_Gemm)->Apply(gemm_args);

enum class Elementwise { RmsNorm, AddRmsNorm, SiluMul };

void BM_Elementwise(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  const auto kind = Elementwise(state.range(0));
  const int64_t n = state.range(1), d = state.range(2);
  Tensor x = random_gpu({n, d}, 1), r = random_gpu({n, d}, 2), out = Tensor::empty({n, d}, DType::BF16, kGpu);
  Tensor w = random_gpu({d}, 3);
  const char* name = "";
  double bytes = 0;  // moved per call, BF16
  std::function<void()> fn;
  switch (kind) {
    case Elementwise::RmsNorm:
      name = "rms_norm";
      bytes = 2.0 * double(n * d) * 2 + double(d) * 2;  // x in, out
      fn = [&] { ops::rms_norm(x, w, 1e-5f, out); };
      break;
    case Elementwise::AddRmsNorm:
      name = "add_rms_norm";
      bytes = 4.0 * double(n * d) * 2 + double(d) * 2;  // x in, residual in and out, out
      fn = [&] { ops::add_rms_norm(x, r, w, 1e-5f, out); };
      break;
    case Elementwise::SiluMul:
      name = "silu_mul";
      bytes = 3.0 * double(n * d) * 2;  // gate, up in, out
      fn = [&] { ops::silu_mul(x, r, out); };
      break;
  }
  fn();
  synchronize(kGpu);
  double dev = 0, host = 0;
  for (auto _ : state) {
    auto [dt, h] = time_launches(20, fn);
    state.SetIterationTime(dt);
    dev += dt;
    host += h;
  }
  BwRow row;
  const double t = dev / double(state.iterations());
  row.us = t * 1e6;
  row.host_us = host / double(state.iterations()) * 1e6;
  row.gbps = bytes / t / 1e9;
  g_bw[fmt::format("{:<12} {} x {}", name, n, d)] = row;
  state.counters["GB/s"] = row.gbps;
  state.counters["host_us"] = row.host_us;
  state.SetLabel(fmt::format("{} [{} x {}] BF16", name, n, d));
}

void elementwise_args(benchmark::internal::Benchmark* b) {
  for (int64_t k = 0; k < 3; ++k)
    for (int64_t n : {256, 4096})
      for (int64_t d : {4096, 14336}) b->Args({k, n, d});
  b->ArgNames({"op", "n", "d"});
  b->UseManualTime();
  b->MinTime(0.1);
}
BENCHMARK(BM_Elementwise)->Apply(elementwise_args);

void print_summary() {
  if (g_gemm.empty() && g_bw.empty()) return;
  std::printf("\n%s\n", device_description(kGpu).c_str());
  std::printf("device-to-device copy bandwidth (read + write): %.0f GB/s\n\n", g_copy_gbps);
  std::printf("| GEMM (BF16, F32 acc.) | us | TFLOP/s | %% of %.0f | weight GB/s | %% of copy bw | host us |\n",
              kPeakTflops);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& [k, r] : g_gemm)
    std::printf("| %s | %.1f | %.1f | %.1f%% | %.0f | %.1f%% | %.1f |\n", k.c_str(), r.us, r.tflops,
                100 * r.tflops / kPeakTflops, r.weight_gbps, g_copy_gbps > 0 ? 100 * r.weight_gbps / g_copy_gbps : 0,
                r.host_us);
  std::printf("\n| op (BF16) | us | GB/s | %% of copy bw | host us |\n|---|---|---|---|---|\n");
  for (const auto& [k, r] : g_bw)
    std::printf("| %s | %.2f | %.0f | %.1f%% | %.2f |\n", k.c_str(), r.us, r.gbps,
                g_copy_gbps > 0 ? 100 * r.gbps / g_copy_gbps : 0, r.host_us);
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
