#include <cstdint>

#include "backend/cuda/cuda_kernels.h"

namespace kite::cuda {

namespace {
// Four elements per thread through float4 (pointers 16-byte aligned).
__global__ void add_f32_vec4(const float* a, const float* b, float* out, int64_t n) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i + 3 < n) {
    float4 x = *reinterpret_cast<const float4*>(a + i);
    float4 y = *reinterpret_cast<const float4*>(b + i);
    *reinterpret_cast<float4*>(out + i) = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  } else {
    for (int64_t j = i; j < n; ++j) out[j] = a[j] + b[j];
  }
}

// One element per thread, for views that are not 16-byte aligned.
__global__ void add_f32_scalar(const float* a, const float* b, float* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}
}  // namespace

cudaError_t launch_add_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int64_t kThreads = 256;
  const bool aligned =
      ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  if (aligned) {
    const int64_t quads = (n + 3) / 4;
    add_f32_vec4<<<unsigned((quads + kThreads - 1) / kThreads), unsigned(kThreads), 0, stream>>>(a, b, out, n);
  } else {
    add_f32_scalar<<<unsigned((n + kThreads - 1) / kThreads), unsigned(kThreads), 0, stream>>>(a, b, out, n);
  }
  return cudaGetLastError();
}

}  // namespace kite::cuda
