// Rotary position embedding in place ("rotate half" layout), one CTA per
// token: the token's cos/sin table goes to shared memory once, then every
// (head, pair) of the row is rotated. The arithmetic is the CPU kernel's:
// angle = float(pos) * inv_freq[j] in F32, cos/sin of it in F64 rounded to F32
// and multiplied by the factor, rotation in F32 with explicit round-to-nearest
// intrinsics so nvcc contracts nothing into FMAs; BF16 rounds once at the end.
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/dense_common.cuh"

namespace kite::cuda {

namespace {

using dense::from_float;
using dense::to_float;

template <typename T>
__global__ void rope_kernel(T* x, const int32_t* positions, const float* inv_freqs, int64_t freq_stride, int64_t heads,
                            int64_t hd, int64_t r, float factor) {
  extern __shared__ float cs[];  // [2, r]: cos then sin
  const int64_t i = blockIdx.x;
  const float pos = float(positions[i]);
  const float* inv_freq = inv_freqs + i * freq_stride;  // this token's [r]
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
    const float a = __fmul_rn(pos, inv_freq[j]);
    double s, c;
    sincos(double(a), &s, &c);
    cs[j] = __fmul_rn(float(c), factor);
    cs[r + j] = __fmul_rn(float(s), factor);
  }
  __syncthreads();
  T* row0 = x + i * heads * hd;  // [heads, hd]
  for (int64_t t = threadIdx.x; t < heads * r; t += blockDim.x) {
    const int64_t h = t / r, j = t - h * r;
    T* row = row0 + h * hd;
    const float x1 = to_float(row[j]), x2 = to_float(row[j + r]), c = cs[j], s = cs[r + j];
    row[j] = from_float<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    row[j + r] = from_float<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
}

template <typename T>
cudaError_t launch_typed(T* x, const int32_t* positions, const float* inv_freq, int64_t freq_stride, int64_t n,
                         int64_t heads, int64_t hd, int64_t r, float factor, cudaStream_t stream) {
  int threads = int(((heads * r + 31) / 32) * 32);
  if (threads < 32) threads = 32;
  if (threads > 256) threads = 256;
  const size_t smem = size_t(2 * r) * sizeof(float);
  rope_kernel<T>
      <<<unsigned(n), unsigned(threads), smem, stream>>>(x, positions, inv_freq, freq_stride, heads, hd, r, factor);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rope(void* x, DType dtype, const int32_t* positions, const float* inv_freq, int64_t freq_stride,
                        int64_t n, int64_t heads, int64_t head_dim, int64_t r, float factor, cudaStream_t stream) {
  if (n <= 0 || heads <= 0 || r <= 0) return cudaSuccess;
  if (n > 0x7fffffff || 2 * r * int64_t(sizeof(float)) > 48 * 1024) return cudaErrorInvalidValue;
  if (dtype == DType::F32)
    return launch_typed(static_cast<float*>(x), positions, inv_freq, freq_stride, n, heads, head_dim, r, factor,
                        stream);
  if (dtype == DType::BF16)
    return launch_typed(static_cast<dense::bf16*>(x), positions, inv_freq, freq_stride, n, heads, head_dim, r, factor,
                        stream);
  return cudaErrorInvalidValue;
}

}  // namespace kite::cuda
