// RoPE on q and k, then the K/V cache write, in one kernel: one CTA per
// token. q, k, v are read at a per-token stride: separate tensors (q rotated
// in place) or the column blocks of a fused QKV output (q rotated into its
// own buffer). The math is the CPU's, step for step: angle float(pos) *
// inv_freq[j] in F32, cos/sin in double rounded to F32 and scaled by the
// attention factor, the rotation as separately rounded F32 products and
// sums (no FMA contraction); each result is rounded to BF16 once.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/attention_host.cuh"

namespace kite::cuda::attn {

namespace {

constexpr int kThreads = 128;

// Each token's rows sit at a stride (elements): q_in/q_out [n_heads,
// head_dim] at q_in_stride/q_out_stride, k and v [n_kv_heads, head_dim] at
// kv_stride: contiguous tensors, or the q, k, v column blocks of a fused QKV
// output. q_in == q_out rotates q in place.
struct RopeArgs {
  const bf16* q_in;
  bf16* q_out;
  const bf16* k;
  const bf16* v;
  int64_t q_in_stride, q_out_stride, kv_stride;
  const int32_t* pos;     // [n_tokens]
  const float* inv_freq;  // [r]
  const int32_t* slots;   // [n_tokens]
  bf16* k_cache;          // [n_slots, n_kv_heads, head_dim]
  bf16* v_cache;          // [n_slots, n_kv_heads, head_dim]
  int n_heads, n_kv_heads, head_dim, r;
  float factor;
  int64_t n_slots;
};

__device__ __forceinline__ float rot_lo(float x1, float x2, float c, float s) {
  return __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));  // x1 cos - x2 sin
}
__device__ __forceinline__ float rot_hi(float x1, float x2, float c, float s) {
  return __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));  // x2 cos + x1 sin
}

__global__ void __launch_bounds__(kThreads) rope_write_kernel(RopeArgs a) {
  extern __shared__ float cs[];  // [2, r]: cos then sin, scaled
  const int64_t t = blockIdx.x;
  const int r = a.r, hd = a.head_dim;
  const float p = float(a.pos[t]);
  for (int j = threadIdx.x; j < r; j += kThreads) {
    const float angle = __fmul_rn(p, a.inv_freq[j]);
    double sd, cd;
    sincos(double(angle), &sd, &cd);
    cs[j] = __fmul_rn(float(cd), a.factor);
    cs[r + j] = __fmul_rn(float(sd), a.factor);
  }
  __syncthreads();
  const bf16* qi = a.q_in + t * a.q_in_stride;
  bf16* qo = a.q_out + t * a.q_out_stride;
  for (int i = threadIdx.x; i < a.n_heads * r; i += kThreads) {
    const int h = i / r, j = i % r;
    const bf16* x = qi + h * hd;
    bf16* y = qo + h * hd;
    const float x1 = __bfloat162float(x[j]), x2 = __bfloat162float(x[j + r]), c = cs[j], s = cs[r + j];
    y[j] = __float2bfloat16_rn(rot_lo(x1, x2, c, s));
    y[j + r] = __float2bfloat16_rn(rot_hi(x1, x2, c, s));
  }
  if (qi != qo && 2 * r < hd) {  // dims past the rotary ones, copied as they are
    const int pass = hd - 2 * r;
    for (int i = threadIdx.x; i < a.n_heads * pass; i += kThreads) {
      const int h = i / pass, d = 2 * r + i % pass;
      qo[h * hd + d] = qi[h * hd + d];
    }
  }
  const int32_t slot = a.slots[t];
  if (slot < 0 || slot >= a.n_slots) return;  // padding: q only
  const int64_t row = int64_t(a.n_kv_heads) * hd;
  const bf16* k = a.k + t * a.kv_stride;
  const bf16* v = a.v + t * a.kv_stride;
  bf16* kc = a.k_cache + slot * row;
  bf16* vc = a.v_cache + slot * row;
  for (int i = threadIdx.x; i < row; i += kThreads) {
    const int d = i % hd;
    const bf16* x = k + (i - d);  // this head's row
    bf16 y = x[d];
    if (d < r)
      y = __float2bfloat16_rn(rot_lo(__bfloat162float(x[d]), __bfloat162float(x[d + r]), cs[d], cs[r + d]));
    else if (d < 2 * r)
      y = __float2bfloat16_rn(rot_hi(__bfloat162float(x[d - r]), __bfloat162float(x[d]), cs[d - r], cs[r + d - r]));
    kc[i] = y;
    vc[i] = v[i];
  }
}

// The rest of `a` from the shared arguments, then the launch (one CTA per token).
void launch(RopeArgs& a, int64_t n_tokens, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
            const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache, int device) {
  a.pos = positions.data_as<const int32_t>();
  a.inv_freq = inv_freq.data_as<const float>();
  a.slots = slot_mapping.data_as<const int32_t>();
  a.k_cache = k_cache.data_as<bf16>();
  a.v_cache = v_cache.data_as<bf16>();
  a.r = int(inv_freq.dim(0));
  a.factor = attention_factor;
  a.n_slots = k_cache.dim(0) * k_cache.dim(1);
  const size_t smem = size_t(2 * std::max(a.r, 1)) * sizeof(float);
  rope_write_kernel<<<unsigned(n_tokens), kThreads, smem, current_stream(device)>>>(a);
  check(cudaGetLastError(), "rope_write_kv_cache kernel launch");
}

}  // namespace

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  const int64_t n_tokens = q.dim(0);
  if (n_tokens == 0) return;
  check(cudaSetDevice(q.device().index), "cudaSetDevice");
  RopeArgs a{};
  a.q_in = q.data_as<const bf16>();
  a.q_out = q.data_as<bf16>();
  a.k = k.data_as<const bf16>();
  a.v = v.data_as<const bf16>();
  a.n_heads = int(q.dim(1));
  a.n_kv_heads = int(k.dim(1));
  a.head_dim = int(q.dim(2));
  a.q_in_stride = a.q_out_stride = int64_t(a.n_heads) * a.head_dim;
  a.kv_stride = int64_t(a.n_kv_heads) * a.head_dim;
  launch(a, n_tokens, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache, q.device().index);
}

void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache) {
  const int64_t n_tokens = qkv.dim(0);
  if (n_tokens == 0) return;
  check(cudaSetDevice(qkv.device().index), "cudaSetDevice");
  RopeArgs a{};
  a.n_heads = int(q.dim(1));
  a.n_kv_heads = int(k_cache.dim(2));
  a.head_dim = int(qkv.dim(2));
  const bf16* base = qkv.data_as<const bf16>();  // [n_tokens, n_heads + 2 n_kv_heads, head_dim]
  a.q_in = base;
  a.k = base + int64_t(a.n_heads) * a.head_dim;
  a.v = base + int64_t(a.n_heads + a.n_kv_heads) * a.head_dim;
  a.q_in_stride = a.kv_stride = int64_t(a.n_heads + 2 * a.n_kv_heads) * a.head_dim;
  a.q_out = q.data_as<bf16>();
  a.q_out_stride = int64_t(a.n_heads) * a.head_dim;
  launch(a, n_tokens, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache, qkv.device().index);
}

}  // namespace kite::cuda::attn
