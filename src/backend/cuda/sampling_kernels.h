#pragma once
// CUDA sampling kernels (sampling.cu) and their registration
// (sampling_ops.cpp). CUDA-internal.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "backend/ops/sampling_params.h"

namespace kite {
struct Kernels;
}

namespace kite::cuda {

// out[r] = argmax of x[r, :] (lowest index on ties, NaN skipped; 0 for an
// all-NaN row). x: [m, n] F32 row-major; out: [m] I32. One CTA per row.
cudaError_t launch_argmax_rows(const float* x, int32_t* out, int64_t m, int64_t n, cudaStream_t stream);

// ---- ops::sample_rows (sample.cu) ------------------------------------------
// One row as the kernel reads it: ops::SampleRow packed for the upload,
// filled by sample_row_args (sampling_ops.cpp) and nowhere else. `params` is
// the request's SamplingParams as they are (a new parameter needs no change
// here, only its use in sample.cu).
struct SampleRowArgs {
  SamplingParams params;
  double uniform;
  int32_t forced_token, num_logprobs;
  int32_t penalty_begin, penalty_end, banned_begin, banned_end;
};
// Copied with memcpy into 8-byte aligned rows of one upload.
static_assert(std::is_trivially_copyable_v<SampleRowArgs> && std::is_standard_layout_v<SampleRowArgs>);
static_assert(sizeof(SampleRowArgs) % 8 == 0 && alignof(SampleRowArgs) <= 8);
constexpr int kSampleMaxTop = 20;
struct SampleResult {
  int32_t token;
  float logprob;
  int32_t rank;
  int32_t n_top;
  int32_t top_ids[kSampleMaxTop];
  float top_logprobs[kSampleMaxTop];
};
// One CTA (small m on sm_90: a cluster of up to 8) per row of logits
// [m, vocab] F32 (modified in place by bans and penalties; restored when the
// row reports logprobs). penalty_tokens / output_counts: [n_pen]; banned:
// [n_ban]; saved: [n_pen + n_ban] F32 scratch; out: [m]. Deterministic:
// masses are fixed-point integers.
cudaError_t launch_sample_rows(float* logits, int64_t m, int64_t vocab, const SampleRowArgs* rows,
                               const int32_t* penalty_tokens, const int32_t* output_counts, int32_t n_pen,
                               const int32_t* banned, float* saved, SampleResult* out, cudaStream_t stream);

// Fills the sampling entries of the CUDA kernel table.
void register_sampling_kernels(Kernels& table);

}  // namespace kite::cuda
