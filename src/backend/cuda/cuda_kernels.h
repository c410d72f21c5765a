#pragma once
// CUDA kernels, declared for cuda_backend.cpp. The .cu files include no fmt
// (its headers do not build under nvcc's C++20 mode): they report CUDA
// errors by returning them, and the host side turns them into kite::Error.
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace kite::cuda {

// out = a + b over n F32 elements (any of them may alias).
cudaError_t launch_add_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);

}  // namespace kite::cuda
