#pragma once
// Host-side error checks of the CUDA backend (plain C++, never included by
// .cu files: fmt does not build under nvcc's C++20 mode). Every CUDA and
// cuBLASLt call is checked; a failure becomes kite::Error("cuda", <call>,
// <what the driver said and what to do>).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace kite::cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
  if (e == cudaErrorMemoryAllocation)
    fail("cuda", what, "out of device memory ({}); lower the batch size or the KV-cache share of the device",
         cudaGetErrorString(e));
  fail("cuda", what, "{} ({}); a sticky error means the device context is lost: restart the process",
       cudaGetErrorString(e), cudaGetErrorName(e));
}

inline void check_cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail("cublasLt", what, "status {} ({}); check the CUDA driver and toolkit versions", int(s),
       cublasLtGetStatusString(s));
}

// Makes `device` current for this thread (cheap when it already is).
inline void set_device(int device) { check_cuda(cudaSetDevice(device), "cudaSetDevice"); }

}  // namespace kite::cuda
