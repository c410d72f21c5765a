#include <cfloat>

#include "backend/cuda/sampling_kernels.h"

namespace kite::cuda {

namespace {

constexpr int kThreads = 1024;

// (value, index) with the order argmax wants: larger value first, then the
// lower index; NaN (index -1 marks "none") loses to everything.
struct Best {
  float v;
  int32_t i;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

__global__ void argmax_rows(const float* __restrict__ x, int32_t* __restrict__ out, int64_t n) {
  const float* row = x + int64_t(blockIdx.x) * n;
  Best b{-FLT_MAX, -1};
  // Each thread scans a strided slice, 4 at a time when the row is aligned.
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15) == 0;
  if (aligned) {
    const int64_t quads = n / 4;
    const float4* r4 = reinterpret_cast<const float4*>(row);
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      float4 f = r4[q];
      const int32_t base = int32_t(q * 4);
      if (!isnan(f.x)) b = better(b, Best{f.x, base});
      if (!isnan(f.y)) b = better(b, Best{f.y, base + 1});
      if (!isnan(f.z)) b = better(b, Best{f.z, base + 2});
      if (!isnan(f.w)) b = better(b, Best{f.w, base + 3});
    }
    for (int64_t j = quads * 4 + threadIdx.x; j < n; j += blockDim.x)
      if (!isnan(row[j])) b = better(b, Best{row[j], int32_t(j)});
  } else {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      if (!isnan(row[j])) b = better(b, Best{row[j], int32_t(j)});
  }
  // Warp, then block reduction.
  for (int off = 16; off > 0; off >>= 1) {
    Best o{__shfl_down_sync(0xffffffffu, b.v, off), __shfl_down_sync(0xffffffffu, b.i, off)};
    b = better(b, o);
  }
  __shared__ Best warp_best[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = b;
  __syncthreads();
  if (warp == 0) {
    b = lane < int(blockDim.x / 32) ? warp_best[lane] : Best{-FLT_MAX, -1};
    for (int off = 16; off > 0; off >>= 1) {
      Best o{__shfl_down_sync(0xffffffffu, b.v, off), __shfl_down_sync(0xffffffffu, b.i, off)};
      b = better(b, o);
    }
    if (lane == 0) out[blockIdx.x] = b.i < 0 ? 0 : b.i;
  }
}

}  // namespace

cudaError_t launch_argmax_rows(const float* x, int32_t* out, int64_t m, int64_t n, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  const int threads = n >= 4 * kThreads ? kThreads : 256;
  argmax_rows<<<unsigned(m), unsigned(threads), 0, stream>>>(x, out, n);
  return cudaGetLastError();
}

}  // namespace kite::cuda
