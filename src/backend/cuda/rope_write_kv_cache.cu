// RoPE on q and k, then the K/V cache write, in one kernel: one CTA per
// token. q, k, v are read at a per-token stride: separate tensors (q rotated
// in place) or the column blocks of a fused QKV output (q rotated into its
// own buffer). The math is the CPU's, step for step: angle float(pos) *
// inv_freq[j] in F32 (the token's own row of a 2-D inv_freq), cos/sin in
// double rounded to F32 and scaled by the attention factor, the rotation as
// separately rounded F32 products and sums (no FMA contraction); each result
// is rounded to BF16 once.
//
// With q/k norms (Qwen3), each warp first takes whole heads and computes
// their inverse RMS into shared memory, summing the squares in exactly the
// order rms_norm.cu's norm_kernel sums a row of head_dim values; the
// rotation then reads each element as rms_norm would store it,
// bf16((x * inv) * w), so the result is bitwise ops::rms_norm, then
// ops::rope, then ops::write_kv_cache.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/attention_host.cuh"
#include "backend/cuda/dense_common.cuh"  // warp_sum, aligned16: rms_norm.cu's reduction

namespace kite::cuda::attn {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;

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
  const float* inv_freq;  // token t's [r] at inv_freq + t * freq_stride
  int64_t freq_stride;    // 0 (one [r] table) or r ([n_tokens, r])
  const int32_t* slots;   // [n_tokens]
  bf16* k_cache;          // [n_slots, n_kv_heads, head_dim]
  bf16* v_cache;          // [n_slots, n_kv_heads, head_dim]
  // Per-head RMSNorm of q and k (both null: none): [head_dim] F32, or BF16
  // where *_bf16 is set.
  const void* q_norm;
  const void* k_norm;
  bool q_norm_bf16, k_norm_bf16;
  bool norm_packed;  // rms_norm.cu's 8-value packs (its aligned path), else single values
  float eps;
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

// The sum of squares of one head row x[0, d), called by a whole warp; every
// lane gets it. The order is rms_norm.cu's norm_kernel on a row of d values:
// a CTA of T = clamp(roundup32(items), 32, 1024) threads over `items` (d / 8
// packs of 8 consecutive values when packed, else d single values); thread
// v accumulates items v, v + T, ... as fmaf(f, f, ss), value by value; then
// dense::block_sum reduces each warp's 32 partials with a xor butterfly, and
// the warp sums (zeros past the last warp) with another. This warp plays
// the T threads one virtual warp at a time.
__device__ float head_sum_squares(const bf16* x, int d, bool packed) {
  const int lane = threadIdx.x % kWarpSize;
  const int per = packed ? 8 : 1, items = d / per;
  const int threads = min(max((items + kWarpSize - 1) / kWarpSize * kWarpSize, kWarpSize), 1024);
  float warp_sums = 0.0f;  // lane w: virtual warp w's sum
  for (int w = 0; w < threads / kWarpSize; ++w) {
    float ss = 0.0f;
    for (int it = w * kWarpSize + lane; it < items; it += threads)
      for (int e = 0; e < per; ++e) {
        const float f = __bfloat162float(x[it * per + e]);
        ss = __fmaf_rn(f, f, ss);
      }
    ss = dense::warp_sum(ss);
    if (lane == w) warp_sums = ss;
  }
  return dense::warp_sum(warp_sums);
}

// Element d of a head row as the rotation takes it: as stored, or (with a
// norm) normalized and rounded to BF16 as ops::rms_norm stores it.
__device__ __forceinline__ float in_value(const bf16* x, int d, const void* w, bool w_bf16, float inv) {
  const float f = __bfloat162float(x[d]);
  if (!w) return f;
  const float wd = w_bf16 ? __bfloat162float(static_cast<const bf16*>(w)[d]) : static_cast<const float*>(w)[d];
  return __bfloat162float(__float2bfloat16_rn(__fmul_rn(__fmul_rn(f, inv), wd)));
}

__global__ void __launch_bounds__(kThreads) rope_write_kernel(RopeArgs a) {
  extern __shared__ float smem[];
  const int r = a.r, hd = a.head_dim;
  float* cs = smem;           // [2, r]: cos then sin, scaled
  float* inv = smem + 2 * r;  // [n_heads + n_kv_heads]: 1 / rms of each q head, then k head (norms only)
  const int64_t t = blockIdx.x;
  const float p = float(a.pos[t]);
  const float* freq = a.inv_freq + t * a.freq_stride;
  for (int j = threadIdx.x; j < r; j += kThreads) {
    const float angle = __fmul_rn(p, freq[j]);
    double sd, cd;
    sincos(double(angle), &sd, &cd);
    cs[j] = __fmul_rn(float(cd), a.factor);
    cs[r + j] = __fmul_rn(float(sd), a.factor);
  }
  const bf16* qi = a.q_in + t * a.q_in_stride;
  bf16* qo = a.q_out + t * a.q_out_stride;
  const bf16* k = a.k + t * a.kv_stride;
  const int32_t slot = a.slots[t];
  const bool write = slot >= 0 && slot < a.n_slots;  // else padding: q only
  const bool norm = a.q_norm != nullptr;
  if (norm) {  // a warp per head; k heads only when they are written
    const int heads = a.n_heads + (write ? a.n_kv_heads : 0);
    for (int h = threadIdx.x / kWarpSize; h < heads; h += kWarps) {
      const bf16* x = h < a.n_heads ? qi + int64_t(h) * hd : k + int64_t(h - a.n_heads) * hd;
      const float ss = head_sum_squares(x, hd, a.norm_packed);
      if (threadIdx.x % kWarpSize == 0) inv[h] = float(1.0 / sqrt(double(ss) / double(hd) + double(a.eps)));
    }
  }
  __syncthreads();  // cs and inv ready; q read in full before it is rotated in place
  for (int i = threadIdx.x; i < a.n_heads * r; i += kThreads) {
    const int h = i / r, j = i % r;
    const bf16* x = qi + h * hd;
    bf16* y = qo + h * hd;
    const float hinv = norm ? inv[h] : 0.0f;
    const float x1 = in_value(x, j, a.q_norm, a.q_norm_bf16, hinv);
    const float x2 = in_value(x, j + r, a.q_norm, a.q_norm_bf16, hinv), c = cs[j], s = cs[r + j];
    y[j] = __float2bfloat16_rn(rot_lo(x1, x2, c, s));
    y[j + r] = __float2bfloat16_rn(rot_hi(x1, x2, c, s));
  }
  if ((qi != qo || norm) && 2 * r < hd) {  // dims past the rotary ones: copied, or normalized
    const int pass = hd - 2 * r;
    for (int i = threadIdx.x; i < a.n_heads * pass; i += kThreads) {
      const int h = i / pass, d = 2 * r + i % pass;
      const bf16* x = qi + h * hd;
      qo[h * hd + d] = norm ? __float2bfloat16_rn(in_value(x, d, a.q_norm, a.q_norm_bf16, inv[h])) : x[d];
    }
  }
  if (!write) return;
  const int64_t row = int64_t(a.n_kv_heads) * hd;
  const bf16* v = a.v + t * a.kv_stride;
  bf16* kc = a.k_cache + slot * row;
  bf16* vc = a.v_cache + slot * row;
  const void* kw = a.k_norm;
  for (int i = threadIdx.x; i < row; i += kThreads) {
    const int d = i % hd;
    const bf16* x = k + (i - d);  // this head's row
    const float kinv = norm ? inv[a.n_heads + i / hd] : 0.0f;
    bf16 y;
    if (d < r)
      y = __float2bfloat16_rn(rot_lo(in_value(x, d, kw, a.k_norm_bf16, kinv),
                                     in_value(x, d + r, kw, a.k_norm_bf16, kinv), cs[d], cs[r + d]));
    else if (d < 2 * r)
      y = __float2bfloat16_rn(rot_hi(in_value(x, d - r, kw, a.k_norm_bf16, kinv),
                                     in_value(x, d, kw, a.k_norm_bf16, kinv), cs[d - r], cs[d]));
    else
      y = norm ? __float2bfloat16_rn(in_value(x, d, kw, a.k_norm_bf16, kinv)) : x[d];
    kc[i] = y;
    vc[i] = v[i];
  }
}

// The rest of `a` from the shared arguments, then the launch (one CTA per token).
void launch(RopeArgs& a, int64_t n_tokens, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
            const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache, const ops::RopeOptions& options, int device) {
  a.pos = positions.data_as<const int32_t>();
  a.inv_freq = inv_freq.data_as<const float>();
  a.r = int(inv_freq.dim(inv_freq.ndim() - 1));  // inv_freq: [r] or [n_tokens, r]
  a.freq_stride = inv_freq.ndim() == 2 ? a.r : 0;
  a.slots = slot_mapping.data_as<const int32_t>();
  a.k_cache = k_cache.data_as<bf16>();
  a.v_cache = v_cache.data_as<bf16>();
  a.factor = attention_factor;
  a.n_slots = k_cache.dim(0) * k_cache.dim(1);
  int norm_heads = 0;
  if (options.q_norm) {  // ops/ checked: k_norm too
    a.q_norm = options.q_norm->data();
    a.k_norm = options.k_norm->data();
    a.q_norm_bf16 = options.q_norm->dtype() == DType::BF16;
    a.k_norm_bf16 = options.k_norm->dtype() == DType::BF16;
    a.eps = options.norm_eps;
    // rms_norm.cu packs a row when d % 8 == 0 and x, out and the weight are
    // 16-byte aligned; each head row is when its tensor's base is.
    a.norm_packed = a.head_dim % 8 == 0 && dense::aligned16(a.q_in) && dense::aligned16(a.q_out) &&
                    dense::aligned16(a.k) && dense::aligned16(a.q_norm) && dense::aligned16(a.k_norm);
    norm_heads = a.n_heads + a.n_kv_heads;
  }
  const size_t smem = size_t(2 * std::max(a.r, 1) + norm_heads) * sizeof(float);
  rope_write_kernel<<<unsigned(n_tokens), kThreads, smem, current_stream(device)>>>(a);
  check(cudaGetLastError(), "rope_write_kv_cache kernel launch");
}

}  // namespace

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const ops::RopeOptions& options) {
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
  launch(a, n_tokens, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache, options, q.device().index);
}

void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const ops::RopeOptions& options) {
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
  launch(a, n_tokens, positions, inv_freq, attention_factor, slot_mapping, k_cache, v_cache, options,
         qkv.device().index);
}

}  // namespace kite::cuda::attn
