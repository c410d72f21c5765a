// Scatters new BF16 K/V rows into their paged-cache slots: one CTA per
// token, 16-byte copies when every row is 16-byte aligned.
#include <cstdint>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/attention_host.cuh"

namespace kite::cuda::attn {

namespace {

constexpr int kThreads = 128;

// k, v: [n_tokens, row] BF16; slots: [n_tokens] I32; caches: [n_slots, row] BF16.
// A slot outside [0, n_slots) (-1: padding) skips the row.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    write_kv_kernel(const bf16* k, const bf16* v, const int32_t* slots, bf16* k_cache, bf16* v_cache, int64_t row,
                    int64_t n_slots) {
  const int64_t t = blockIdx.x;
  const int32_t slot = slots[t];
  if (slot < 0 || slot >= n_slots) return;
  const int64_t src = t * row, dst = int64_t(slot) * row;
  if (kVec) {
    for (int64_t i = threadIdx.x * 8; i < row; i += kThreads * 8) {
      *reinterpret_cast<uint4*>(k_cache + dst + i) = *reinterpret_cast<const uint4*>(k + src + i);
      *reinterpret_cast<uint4*>(v_cache + dst + i) = *reinterpret_cast<const uint4*>(v + src + i);
    }
  } else {
    for (int64_t i = threadIdx.x; i < row; i += kThreads) {
      k_cache[dst + i] = k[src + i];
      v_cache[dst + i] = v[src + i];
    }
  }
}

}  // namespace

void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  const int64_t n_tokens = k.dim(0), row = k.dim(1) * k.dim(2);
  if (n_tokens == 0 || row == 0) return;
  const int64_t n_slots = k_cache.dim(0) * k_cache.dim(1);
  check(cudaSetDevice(k.device().index), "cudaSetDevice");
  const auto addr = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()); };
  const bool vec = row % 8 == 0 && ((addr(k) | addr(v) | addr(k_cache) | addr(v_cache)) & 15) == 0;
  const bf16* pk = k.data_as<const bf16>();                      // [n_tokens, n_kv_heads, head_dim]
  const bf16* pv = v.data_as<const bf16>();                      // [n_tokens, n_kv_heads, head_dim]
  const int32_t* slots = slot_mapping.data_as<const int32_t>();  // [n_tokens]
  bf16* kc = k_cache.data_as<bf16>();                            // [num_blocks * block_size, n_kv_heads, head_dim]
  bf16* vc = v_cache.data_as<bf16>();                            // [num_blocks * block_size, n_kv_heads, head_dim]
  cudaStream_t stream = current_stream(k.device().index);
  if (vec)
    write_kv_kernel<true><<<unsigned(n_tokens), kThreads, 0, stream>>>(pk, pv, slots, kc, vc, row, n_slots);
  else
    write_kv_kernel<false><<<unsigned(n_tokens), kThreads, 0, stream>>>(pk, pv, slots, kc, vc, row, n_slots);
  check(cudaGetLastError(), "write_kv_cache kernel launch");
}

}  // namespace kite::cuda::attn
