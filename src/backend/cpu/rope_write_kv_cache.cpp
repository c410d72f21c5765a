// RoPE on q and k, then the cache write: the CPU's own rope and
// write_kv_cache kernels run one after the other (bitwise what the two ops
// give), with k rotated in a copy so the caller's k is left as it was.
#include "backend/cpu/cpu_ops.h"

namespace kite::cpu {

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  rope(q, positions, inv_freq, attention_factor);
  Tensor k_rot = k.to(kCpu);  // [n_tokens, n_kv_heads, head_dim]
  rope(k_rot, positions, inv_freq, attention_factor);
  write_kv_cache(k_rot, v, slot_mapping, k_cache, v_cache);
}

}  // namespace kite::cpu
