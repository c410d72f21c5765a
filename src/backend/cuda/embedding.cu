// Embedding lookup: one CTA per token row, 16-byte copies when table and out
// share a dtype and the rows are 16-byte aligned, converting loads otherwise.
#include <type_traits>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/dense_common.cuh"

namespace kite::cuda {

namespace {

using dense::bf16;

template <typename S, typename D>
__global__ void embedding_kernel(const S* table, const int32_t* ids, int64_t first_id, int64_t vocab, D* out, int64_t d,
                                 bool packed) {
  const int64_t i = blockIdx.x;
  const int64_t id = int64_t(ids[i]) - first_id;
  D* orow = out + i * d;
  const bool valid = id >= 0 && id < vocab;
  const S* trow = table + (valid ? int64_t(id) : 0) * d;
  if constexpr (std::is_same_v<S, D>) {
    if (packed) {
      constexpr int kN = dense::Pack<D>::kN;
      const int64_t packs = d / kN;
      for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
        dense::Pack<D> v{};
        if (valid) v = dense::load_pack(trow + p * kN);
        dense::store_pack(orow + p * kN, v);
      }
      return;
    }
  }
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    orow[j] = dense::from_float<D>(valid ? dense::to_float(trow[j]) : 0.0f);
}

template <typename S, typename D>
cudaError_t launch_typed(const S* table, const int32_t* ids, int64_t first_id, int64_t vocab, D* out, int64_t n,
                         int64_t d, cudaStream_t stream) {
  constexpr int kN = dense::Pack<D>::kN;
  const bool packed = std::is_same_v<S, D> && d % kN == 0 && dense::aligned16(table) && dense::aligned16(out);
  const int64_t items = packed ? d / kN : d;
  int threads = int(((items + 31) / 32) * 32);
  if (threads < 32) threads = 32;
  if (threads > 512) threads = 512;
  embedding_kernel<S, D><<<unsigned(n), unsigned(threads), 0, stream>>>(table, ids, first_id, vocab, out, d, packed);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_from(const S* table, const int32_t* ids, int64_t first_id, int64_t vocab, void* out, DType out_dtype,
                        int64_t n, int64_t d, cudaStream_t stream) {
  if (out_dtype == DType::F32) return launch_typed(table, ids, first_id, vocab, static_cast<float*>(out), n, d, stream);
  if (out_dtype == DType::BF16) return launch_typed(table, ids, first_id, vocab, static_cast<bf16*>(out), n, d, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_embedding(const void* table, DType table_dtype, const int32_t* ids, int64_t first_id, int64_t vocab,
                             void* out, DType out_dtype, int64_t n, int64_t d, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  if (table_dtype == DType::F32)
    return launch_from(static_cast<const float*>(table), ids, first_id, vocab, out, out_dtype, n, d, stream);
  if (table_dtype == DType::BF16)
    return launch_from(static_cast<const bf16*>(table), ids, first_id, vocab, out, out_dtype, n, d, stream);
  return cudaErrorInvalidValue;
}

}  // namespace kite::cuda
