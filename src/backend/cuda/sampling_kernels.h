#pragma once
// CUDA sampling kernels (sampling.cu) and their registration
// (sampling_ops.cpp). CUDA-internal.
#include <cuda_runtime.h>

#include <cstdint>

namespace kite {
struct Kernels;
}

namespace kite::cuda {

// out[r] = argmax of x[r, :] (lowest index on ties, NaN skipped; 0 for an
// all-NaN row). x: [m, n] F32 row-major; out: [m] I32. One CTA per row.
cudaError_t launch_argmax_rows(const float* x, int32_t* out, int64_t m, int64_t n, cudaStream_t stream);

// Fills the sampling entries of the CUDA kernel table.
void register_sampling_kernels(Kernels& table);

}  // namespace kite::cuda
