// out = a + b (F32, BF16) and the shared binary elementwise launcher.
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/elementwise.cuh"

namespace kite::cuda {

namespace {
struct AddOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
}  // namespace

cudaError_t launch_add(const void* a, const void* b, void* out, DType dtype, int64_t n, cudaStream_t stream) {
  return dense::launch_binary(a, b, out, dtype, n, AddOp{}, stream);
}

}  // namespace kite::cuda
