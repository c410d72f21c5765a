// silu_mul (SwiGLU) and the bias add behind linear's fallback path.
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/elementwise.cuh"

namespace kite::cuda {

namespace {

struct SiluMulOp {
  // silu(g) * u = g / (1 + exp(-g)) * u; expf (not __expf) keeps F32 accuracy,
  // and a very negative g gives g / inf = -0 instead of NaN.
  __device__ __forceinline__ float operator()(float g, float u) const { return g / (1.0f + expf(-g)) * u; }
};

template <typename Y, typename B>
__global__ void add_bias_kernel(Y* y, const B* bias, int64_t n, int64_t m) {
  const int64_t total = n * m, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    y[i] = dense::from_float<Y>(dense::to_float(y[i]) + dense::to_float(bias[i % m]));
}

template <typename Y>
cudaError_t add_bias_for(Y* y, const void* bias, DType bias_dtype, int64_t n, int64_t m, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = dense::grid_for(n * m, kThreads);
  if (bias_dtype == DType::F32)
    add_bias_kernel<<<blocks, kThreads, 0, stream>>>(y, static_cast<const float*>(bias), n, m);
  else if (bias_dtype == DType::BF16)
    add_bias_kernel<<<blocks, kThreads, 0, stream>>>(y, static_cast<const dense::bf16*>(bias), n, m);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_silu_mul(const void* gate, const void* up, void* out, DType dtype, int64_t n, cudaStream_t stream) {
  return dense::launch_binary(gate, up, out, dtype, n, SiluMulOp{}, stream);
}

namespace {

// One thread per 16-byte pack of out (a row's f elements a whole number of
// packs, every pointer 16-byte aligned).
template <typename T>
__global__ void silu_mul_fused_packed(const T* gate_up, T* out, int64_t packs, int64_t row_packs, int64_t f) {
  constexpr int kN = dense::Pack<T>::kN;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    const int64_t row = p / row_packs, col = (p - row * row_packs) * kN;
    const T* g = gate_up + row * 2 * f + col;
    const dense::Pack<T> x = dense::load_pack(g), y = dense::load_pack(g + f);
    dense::Pack<T> r;
#pragma unroll
    for (int i = 0; i < kN; ++i)
      r.v[i] = dense::from_float<T>(SiluMulOp{}(dense::to_float(x.v[i]), dense::to_float(y.v[i])));
    dense::store_pack(out + row * f + col, r);
  }
}

template <typename T>
__global__ void silu_mul_fused_scalar(const T* gate_up, T* out, int64_t total, int64_t f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / f, col = i - row * f;
    const T* g = gate_up + row * 2 * f + col;
    out[i] = dense::from_float<T>(SiluMulOp{}(dense::to_float(g[0]), dense::to_float(g[f])));
  }
}

template <typename T>
cudaError_t silu_mul_fused_typed(const T* gate_up, T* out, int64_t n, int64_t f, cudaStream_t stream) {
  constexpr int kThreads = 256, kN = dense::Pack<T>::kN;
  if (f % kN == 0 && dense::aligned16(gate_up) && dense::aligned16(out)) {
    const int64_t packs = n * f / kN;
    silu_mul_fused_packed<T><<<dense::grid_for(packs, kThreads), kThreads, 0, stream>>>(gate_up, out, packs, f / kN, f);
  } else {
    silu_mul_fused_scalar<T><<<dense::grid_for(n * f, kThreads), kThreads, 0, stream>>>(gate_up, out, n * f, f);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_silu_mul_fused(const void* gate_up, void* out, DType dtype, int64_t n, int64_t f,
                                  cudaStream_t stream) {
  if (n <= 0 || f <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32:
      return silu_mul_fused_typed(static_cast<const float*>(gate_up), static_cast<float*>(out), n, f, stream);
    case DType::BF16:
      return silu_mul_fused_typed(static_cast<const dense::bf16*>(gate_up), static_cast<dense::bf16*>(out), n, f,
                                  stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_add_bias(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t n, int64_t m,
                            cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (y_dtype == DType::F32) return add_bias_for(static_cast<float*>(y), bias, bias_dtype, n, m, stream);
  if (y_dtype == DType::BF16) return add_bias_for(static_cast<dense::bf16*>(y), bias, bias_dtype, n, m, stream);
  return cudaErrorInvalidValue;
}

}  // namespace kite::cuda
