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

cudaError_t launch_add_bias(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t n, int64_t m,
                            cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (y_dtype == DType::F32) return add_bias_for(static_cast<float*>(y), bias, bias_dtype, n, m, stream);
  if (y_dtype == DType::BF16) return add_bias_for(static_cast<dense::bf16*>(y), bias, bias_dtype, n, m, stream);
  return cudaErrorInvalidValue;
}

}  // namespace kite::cuda
