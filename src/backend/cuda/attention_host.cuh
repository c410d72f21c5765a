#pragma once
// Host-side glue shared by the attention .cu files (paged_attention.cu,
// write_kv_cache.cu, rope_write_kv_cache.cu): Tensor arguments in, kernels
// launched on the device's stream, CUDA failures raised as kite::Error.
//
// These .cu files include core/error.h, hence fmt. fmt 9 turns its constexpr
// support off when it sees __NVCC__, and then its own always-constexpr
// helpers fail to compile in C++20; with FMT_USE_CONSTEXPR set to 1 (what
// the host compiler gets in every .cpp file anyway) the headers build.
#ifndef FMT_USE_CONSTEXPR
#define FMT_USE_CONSTEXPR 1
#endif
#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"  // current_stream
#include "backend/kernels.h"
#include "core/error.h"

namespace kite::cuda {
namespace attn {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
  fail("cuda", what, "{} ({}); a sticky error means the device context is lost: restart the process",
       cudaGetErrorString(e), cudaGetErrorName(e));
}

// The kernel-table entries (arguments already checked by backend/ops/).
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const ops::PagedAttentionHints& hints, int64_t sliding_window, Tensor& out);
void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache);
void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const ops::RopeOptions& options);
void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const ops::RopeOptions& options);

}  // namespace attn
}  // namespace kite::cuda
