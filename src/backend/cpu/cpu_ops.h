#pragma once
// CPU kernels behind the kernel table. Arguments were validated by the
// dispatchers in backend/ops/ (dtypes, shapes, contiguity, one device).
// Each SIMD-using kernel takes the level to run at, capped to what the CPU
// supports, so tests can check every path in one process.
#include <cstdint>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::cpu {

void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
void embedding_shard(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out, SimdLevel level);
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, SimdLevel level);
// A quantized (not Dense) weight; perm values are range-checked here.
void linear_q(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y, SimdLevel level);
// What linear_q works out from the weight alone, once (a Linear's pack
// step): src[p], the logical column of x feeding position p of the prepared
// activations (act-order gather and 4-bit block reorder, linear_q_kernels.h),
// and whether x can be read as it is.
struct LinearQPlan {
  std::vector<int32_t> src;  // [in]
  bool as_is = false;
};
LinearQPlan plan_linear_q(const QuantWeight& w);
// linear_q with the plan made and the bias ([out] F32 or null) converted beforehand.
void linear_q(const Tensor& x, const QuantWeight& w, const LinearQPlan& plan, const float* bias, Tensor& y,
              SimdLevel level);
// cos/sin dominate rope and are evaluated in double: one path for every level.
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale, Tensor& out,
               SimdLevel level);
// Same code per (query, head) as attention: bitwise equal for the same keys.
// sliding_window: 0 (none) or W >= 1 (keys (p - W, p] only; see ops/paged_attention.h).
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale, int64_t sliding_window,
                     Tensor& out, SimdLevel level);
// Row copies only: one path for every level.
void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache);
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out, SimdLevel level);
// gate_up [n, 2f] -> out [n, f]: silu_mul's kernel on each row's two halves.
void silu_mul_fused(const Tensor& gate_up, Tensor& out, SimdLevel level);
void add(const Tensor& a, const Tensor& b, Tensor& out, SimdLevel level);

}  // namespace kite::cpu
