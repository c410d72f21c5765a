#pragma once
// The CUDA attention kernels (paged_attention.cu, write_kv_cache.cu,
// rope_write_kv_cache.cu): BF16 paged attention (decode and FlashAttention-2
// style prefill, split-KV), the paged KV-cache write and the fused RoPE +
// cache write.
#include "backend/kernels.h"

namespace kite::cuda {

// Fills paged_attention, write_kv_cache and rope_write_kv_cache of the CUDA
// table (called from register_backend).
void register_attention_kernels(Kernels& table);

}  // namespace kite::cuda
