#pragma once
// Per-device kernel tables. backend/ops/<op>.cpp checks arguments and calls
// kernels(device).<op>; backend/cpu/ fills the CPU table, backend/cuda/ the
// CUDA one. An entry left null means "not implemented on that device" and
// the dispatcher raises a clear error.
#include <cstdint>

#include "backend/ops/paged_attention.h"
#include "backend/ops/rope_write_kv_cache.h"
#include "backend/ops/sample.h"
#include "core/device.h"
#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite {

struct Kernels {
  void (*embedding)(const Tensor& table, const Tensor& ids, Tensor& out) = nullptr;
  void (*embedding_shard)(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out) = nullptr;
  void (*rms_norm)(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = nullptr;
  void (*linear)(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = nullptr;
  // Quantized weights (never Dense: ops::linear_q forwards those to linear).
  void (*linear_q)(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y) = nullptr;
  // inv_freq: [r] or [n, r] (ops/rope.h).
  void (*rope)(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor) = nullptr;
  void (*attention)(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale,
                    Tensor& out) = nullptr;
  // hints arrive resolved: max_query_len and max_context_len are >= 0.
  void (*paged_attention)(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                          const Tensor& context_lens, const Tensor& block_tables, float scale,
                          const ops::PagedAttentionHints& hints, int64_t sliding_window, Tensor& out) = nullptr;
  void (*write_kv_cache)(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                         Tensor& v_cache) = nullptr;
  void (*silu_mul)(const Tensor& gate, const Tensor& up, Tensor& out) = nullptr;
  // out = silu(gate_up[:, :f]) * gate_up[:, f:] (ops/silu_mul.h).
  void (*silu_mul_fused)(const Tensor& gate_up, Tensor& out) = nullptr;
  void (*add)(const Tensor& a, const Tensor& b, Tensor& out) = nullptr;
  // inv_freq: [r] or [n_tokens, r]; options: q/k norms, both or neither (ops/rope_write_kv_cache.h).
  void (*rope_write_kv_cache)(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                              const Tensor& inv_freq, float attention_factor, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, const ops::RopeOptions& options) = nullptr;
  void (*rope_write_kv_cache_fused)(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                                    float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                                    Tensor& v_cache, const ops::RopeOptions& options) = nullptr;
  // residual += x, then out = rms_norm(residual) (ops/add_rms_norm.h).
  void (*add_rms_norm)(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out) = nullptr;
  // out[r] = argmax of row r of x [m, n] F32 (ops/argmax.h).
  void (*argmax)(const Tensor& x, Tensor& out) = nullptr;
  // One token per row of logits [m, vocab] F32 (ops/sample.h); metadata checked.
  std::vector<ops::SampledToken> (*sample_rows)(Tensor& logits, const ops::SampleBatch& batch) = nullptr;
};

// The table for a device kind (throws kite::Error when the kind is absent).
Kernels& kernels(DeviceKind kind);
// Used by backends to fill their tables.
Kernels& mutable_kernels(DeviceKind kind);

}  // namespace kite
