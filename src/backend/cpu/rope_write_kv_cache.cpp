// RoPE on q and k, then the cache write: the CPU's own rope and
// write_kv_cache kernels run one after the other (bitwise what the two ops
// give), with k rotated in a copy so the caller's k is left as it was. The
// fused-QKV variant splits qkv into copies first.
#include "backend/cpu/cpu_ops.h"

namespace kite::cpu {

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  rope(q, positions, inv_freq, attention_factor);
  Tensor k_rot = k.to(kCpu);  // [n_tokens, n_kv_heads, head_dim]
  rope(k_rot, positions, inv_freq, attention_factor);
  write_kv_cache(k_rot, v, slot_mapping, k_cache, v_cache);
}

void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache) {
  const int64_t n = qkv.dim(0), nh = q.dim(1), nkv = k_cache.dim(2), hd = qkv.dim(2);
  const Tensor rows = qkv.reshape({n, (nh + 2 * nkv) * hd});  // row-strided 2-D column blocks below
  Tensor k = Tensor::empty({n, nkv, hd}, qkv.dtype()), v = Tensor::empty({n, nkv, hd}, qkv.dtype());
  Tensor q2 = q.reshape({n, nh * hd}), k2 = k.reshape({n, nkv * hd}), v2 = v.reshape({n, nkv * hd});
  q2.copy_from(rows.slice(1, 0, nh * hd));
  k2.copy_from(rows.slice(1, nh * hd, (nh + nkv) * hd));
  v2.copy_from(rows.slice(1, (nh + nkv) * hd, (nh + 2 * nkv) * hd));
  rope_write_kv_cache(q, k, v, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache);
}

}  // namespace kite::cpu
