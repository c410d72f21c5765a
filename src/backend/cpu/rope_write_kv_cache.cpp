// RoPE on q and k, then the cache write: the CPU's own rope and
// write_kv_cache kernels run one after the other (bitwise what the two ops
// give), with k rotated in a copy so the caller's k is left as it was. With
// q/k norms, the CPU's rms_norm kernel first normalizes each head row in
// place (q) or in the copy (k), at the level ops::rms_norm runs at. The
// fused-QKV variant splits qkv into copies first.
#include "backend/cpu/cpu_ops.h"

namespace kite::cpu {

namespace {

// Each head row of x [n, heads, head_dim] normalized in place, as ops::rms_norm on [n * heads, head_dim].
void norm_heads(Tensor& x, const Tensor& weight, float eps) {
  Tensor rows = x.reshape({x.dim(0) * x.dim(1), x.dim(2)});  // a view of x
  rms_norm(rows, weight, eps, rows, simd_level());
}

}  // namespace

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const ops::RopeOptions& options) {
  if (options.q_norm) norm_heads(q, *options.q_norm, options.norm_eps);
  rope(q, positions, inv_freq, attention_factor);
  Tensor k_rot = k.to(kCpu);  // [n_tokens, n_kv_heads, head_dim]
  if (options.k_norm) norm_heads(k_rot, *options.k_norm, options.norm_eps);
  rope(k_rot, positions, inv_freq, attention_factor);
  write_kv_cache(k_rot, v, slot_mapping, k_cache, v_cache);
}

void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const ops::RopeOptions& options) {
  const int64_t n = qkv.dim(0), nh = q.dim(1), nkv = k_cache.dim(2), hd = qkv.dim(2);
  const Tensor rows = qkv.reshape({n, (nh + 2 * nkv) * hd});  // row-strided 2-D column blocks below
  Tensor k = Tensor::empty({n, nkv, hd}, qkv.dtype()), v = Tensor::empty({n, nkv, hd}, qkv.dtype());
  Tensor q2 = q.reshape({n, nh * hd}), k2 = k.reshape({n, nkv * hd}), v2 = v.reshape({n, nkv * hd});
  q2.copy_from(rows.slice(1, 0, nh * hd));
  k2.copy_from(rows.slice(1, nh * hd, (nh + nkv) * hd));
  v2.copy_from(rows.slice(1, (nh + nkv) * hd, (nh + 2 * nkv) * hd));
  cpu::rope_write_kv_cache(q, k, v, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache, options);
}

}  // namespace kite::cpu
