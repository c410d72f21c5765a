// A plain BF16 linear for the shapes cuBLASLt has no algorithm for (odd
// leading dimensions, oddly aligned views): one warp per output element, F32
// partial sums per lane and a shuffle reduction, bias added before the one
// rounding to y's dtype. Correct at any size; fast only for small ones.
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/dense_common.cuh"

namespace kite::cuda {

namespace {

using dense::bf16;

template <typename Y, typename B>
__global__ void linear_warp_kernel(const bf16* x, const bf16* w, const B* bias, Y* y, int64_t n, int64_t m, int64_t k) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n * m) return;  // whole warps leave together
  const int64_t i = warp / m, j = warp - i * m;
  const bf16* xr = x + i * k;
  const bf16* wr = w + j * k;
  float acc = 0.0f;
  for (int64_t t = lane; t < k; t += 32) acc = fmaf(__bfloat162float(xr[t]), __bfloat162float(wr[t]), acc);
  acc = dense::warp_sum(acc);
  if (lane == 0) {
    if (bias) acc += dense::to_float(bias[j]);
    y[warp] = dense::from_float<Y>(acc);
  }
}

template <typename Y, typename B>
cudaError_t launch_typed(const void* x, const void* w, const B* bias, Y* y, int64_t n, int64_t m, int64_t k,
                         cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t warps = n * m, blocks = (warps * 32 + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  linear_warp_kernel<Y, B><<<unsigned(blocks), kThreads, 0, stream>>>(static_cast<const bf16*>(x),
                                                                      static_cast<const bf16*>(w), bias, y, n, m, k);
  return cudaGetLastError();
}

template <typename Y>
cudaError_t launch_for_y(const void* x, const void* w, const void* bias, DType bias_dtype, Y* y, int64_t n, int64_t m,
                         int64_t k, cudaStream_t stream) {
  if (!bias || bias_dtype == DType::F32) return launch_typed(x, w, static_cast<const float*>(bias), y, n, m, k, stream);
  if (bias_dtype == DType::BF16) return launch_typed(x, w, static_cast<const bf16*>(bias), y, n, m, k, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_linear_fallback(const void* x, const void* w, const void* bias, DType bias_dtype, void* y,
                                   DType y_dtype, int64_t n, int64_t m, int64_t k, cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (y_dtype == DType::F32) return launch_for_y(x, w, bias, bias_dtype, static_cast<float*>(y), n, m, k, stream);
  if (y_dtype == DType::BF16) return launch_for_y(x, w, bias, bias_dtype, static_cast<bf16*>(y), n, m, k, stream);
  return cudaErrorInvalidValue;
}

}  // namespace kite::cuda
