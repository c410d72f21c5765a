#pragma once
// A binary elementwise launcher over F32 or BF16 (.cu only): out[i] =
// op(float(a[i]), float(b[i])) rounded to the dtype, 16-byte packs when every
// pointer is 16-byte aligned (the tail of fewer than one pack handled by the
// first block), one element per thread otherwise. out may alias a or b: each
// element is read and written by the same thread.
#include "backend/cuda/dense_common.cuh"
#include "core/dtype.h"

namespace kite::cuda::dense {

template <typename T, typename Op>
__global__ void binary_packed(const T* a, const T* b, T* out, int64_t packs, int64_t n, Op op) {
  constexpr int kN = Pack<T>::kN;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    const Pack<T> x = load_pack(a + p * kN), y = load_pack(b + p * kN);
    Pack<T> r;
#pragma unroll
    for (int i = 0; i < kN; ++i) r.v[i] = from_float<T>(op(to_float(x.v[i]), to_float(y.v[i])));
    store_pack(out + p * kN, r);
  }
  const int64_t tail = n - packs * kN;  // < kN
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const int64_t i = packs * kN + threadIdx.x;
    out[i] = from_float<T>(op(to_float(a[i]), to_float(b[i])));
  }
}

template <typename T, typename Op>
__global__ void binary_scalar(const T* a, const T* b, T* out, int64_t n, Op op) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = from_float<T>(op(to_float(a[i]), to_float(b[i])));
}

template <typename T, typename Op>
cudaError_t launch_binary_typed(const T* a, const T* b, T* out, int64_t n, Op op, cudaStream_t stream) {
  constexpr int kThreads = 256;
  if (aligned16(a) && aligned16(b) && aligned16(out)) {
    const int64_t packs = n / Pack<T>::kN;
    binary_packed<T><<<grid_for(packs, kThreads), kThreads, 0, stream>>>(a, b, out, packs, n, op);
  } else {
    binary_scalar<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(a, b, out, n, op);
  }
  return cudaGetLastError();
}

template <typename Op>
cudaError_t launch_binary(const void* a, const void* b, void* out, DType dtype, int64_t n, Op op, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32:
      return launch_binary_typed(static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(out),
                                 n, op, stream);
    case DType::BF16:
      return launch_binary_typed(static_cast<const bf16*>(a), static_cast<const bf16*>(b), static_cast<bf16*>(out), n,
                                 op, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kite::cuda::dense
