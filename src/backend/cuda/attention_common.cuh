#pragma once
// Device helpers of the attention kernels (.cu only): cp.async copies into
// shared memory, ldmatrix, BF16 mma.sync m16n8k16 with F32 accumulators
// (sm_80 and later), and a warp's online-softmax step over a tile of keys.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16x16, row major): a0 (row g, cols 2t..2t+1), a1 (row g+8, same cols),
//                         a2 (row g, cols 2t+8..2t+9), a3 (row g+8, cols 2t+8..)
//   B (16x8, col major):  b0 (rows 2t..2t+1, col g), b1 (rows 2t+8..2t+9, col g)
//   C (16x8):             c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols)
// Tiles in shared memory are [rows][head_dim] BF16 with the 16-byte chunk c
// of row r stored at chunk c ^ (r % 8), so the 8 row addresses of an
// ldmatrix hit 8 different bank groups.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kite::cuda::attn {

using bf16 = __nv_bfloat16;

constexpr int kWarpSize = 32;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; with valid == false the 16 bytes are zeroed and
// nothing is read (src must still be a mapped address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b (BF16 inputs, F32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to BF16 (nearest even), the first in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x (MUFU.EX2, relative error ~2^-22; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Offset in elements of 16-byte chunk `chunk` of row `row` in a swizzled
// [rows][kHeadDim] BF16 tile.
template <int kHeadDim>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// A warp's 16 * kMT query rows (kMT m-tiles of 16): the running max m (log2
// units, scores pre-multiplied by scale * log2 e), the running per-thread
// partial sum l of the rows this thread holds (g and g+8 of each m-tile),
// and the unnormalized output O (kHeadDim / 8 tiles of 16x8 per m-tile).
// With one m-tile the Q fragments stay in registers; with two they are
// re-read from shared memory at every step (registers go to O), and each K
// and V fragment read from shared memory feeds both m-tiles.
template <int kHeadDim, int kMT>
struct WarpState {
  static_assert(kMT == 1 || kMT == 2, "16 or 32 rows per warp");
  uint32_t q[kMT == 1 ? kHeadDim / 16 : 1][4];  // kMT == 1: the Q fragments
  const bf16* q_tile = nullptr;                 // the warp's swizzled [16 * kMT][kHeadDim] rows
  float m[kMT][2];
  float l[kMT][2];
  float o[kMT][kHeadDim / 8][4];

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      m[mt][0] = m[mt][1] = -INFINITY;
      l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; ++d) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
    }
  }

  // The A fragment of m-tile mt at k-step kk from the swizzled Q rows.
  __device__ __forceinline__ void q_frag(uint32_t (&a)[4], int mt, int kk, int lane) const {
    const int row = mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(a, smem_addr(q_tile + swz<kHeadDim>(row, 2 * kk + (lane >> 4))));
  }

  // `tile`: the warp's rows (a multiple of 16 rows into a swizzled tile).
  __device__ __forceinline__ void load_q(const bf16* tile, int lane) {
    q_tile = tile;
    if constexpr (kMT == 1) {
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) q_frag(q[kk], 0, kk, lane);
    }
  }

  // One online-softmax step over kKeys keys held in swizzled [kKeys][kHeadDim]
  // tiles k_tile and v_tile; key j of the tile is position key0 + j. With
  // `masked`, key position p is excluded from row r when p > pos[mt][r],
  // p >= key_end, or (window > 0, a sliding window) pos[mt][r] - p >= window
  // (pos: this thread's rows g and g+8 of each m-tile).
  template <int kKeys>
  __device__ __forceinline__ void step(const bf16* k_tile, const bf16* v_tile, int lane, float scale_log2, bool masked,
                                       int key0, const int (&pos)[kMT][2], int key_end, int window) {
    static_assert(kKeys % 16 == 0, "keys come in steps of 16");
    float s[kMT][kKeys / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
    // S = Q K^T: K rows are the B operand's columns (ldmatrix without .trans).
    {
      const int key = (lane & 7) + (lane >> 4) * 8, sub = (lane >> 3) & 1;
      // With Q in shared memory nothing is indexed by kk: a rolled loop keeps
      // the compiler from holding every K address in registers.
#pragma unroll(kMT == 1 ? kHeadDim / 16 : 1)
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kMT == 1) {
            a[mt][0] = q[kk][0], a[mt][1] = q[kk][1], a[mt][2] = q[kk][2], a[mt][3] = q[kk][3];
          } else {
            q_frag(a[mt], mt, kk, lane);
          }
        }
#pragma unroll
        for (int np = 0; np < kKeys / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, smem_addr(k_tile + swz<kHeadDim>(np * 16 + key, 2 * kk + sub)));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16(s[mt][2 * np], a[mt], b[0], b[1]);
            mma_bf16(s[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    const int t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[mt][n][e] * scale_log2;
          if (masked) {
            const int p = key0 + n * 8 + 2 * t + (e & 1);
            const int row_pos = pos[mt][e >> 1];
            if (p > row_pos || p >= key_end || (window > 0 && row_pos - p >= window)) v = -INFINITY;
          }
          s[mt][n][e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      float alpha[2], m_use[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[mt][r], mx[r]);
        m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with every key masked so far
        alpha[r] = fast_exp2(m[mt][r] - m_use[r]);
        m[mt][r] = m_new;
      }
      float sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][n][e] = fast_exp2(s[mt][n][e] - m_use[e >> 1]);
          sum[e >> 1] += s[mt][n][e];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * alpha[r] + sum[r];
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; ++d) {
        o[mt][d][0] *= alpha[0];
        o[mt][d][1] *= alpha[0];
        o[mt][d][2] *= alpha[1];
        o[mt][d][3] *= alpha[1];
      }
    }
    // O += P V: the S accumulators of two adjacent key tiles are the A
    // fragment of one 16-key step; V rows are the B operand's rows (.trans).
    const int key = (lane & 7) + ((lane >> 3) & 1) * 8, sub = lane >> 4;
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        a[mt][0] = pack_bf16(s[mt][2 * kt][0], s[mt][2 * kt][1]);
        a[mt][1] = pack_bf16(s[mt][2 * kt][2], s[mt][2 * kt][3]);
        a[mt][2] = pack_bf16(s[mt][2 * kt + 1][0], s[mt][2 * kt + 1][1]);
        a[mt][3] = pack_bf16(s[mt][2 * kt + 1][2], s[mt][2 * kt + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_addr(v_tile + swz<kHeadDim>(kt * 16 + key, 2 * dp + sub)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16(o[mt][2 * dp], a[mt], b[0], b[1]);
          mma_bf16(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // The full row sums (the four threads of a quad hold parts of each row).
  __device__ __forceinline__ void finish_sums() {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 1);
        l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 2);
      }
  }
};

// Where a query row's result goes: with one split straight to `out` (BF16,
// normalized); with several, the normalized F32 partial and its log2-sum-exp
// to the workspace, for merge_splits.
struct OutputArgs {
  bf16* out;        // [n_tokens, n_heads, head_dim]
  float* part_o;    // [splits, n_tokens, n_heads, head_dim] (splits > 1)
  float* part_lse;  // [splits, n_tokens, n_heads] (splits > 1)
  int64_t n_tokens;
  int n_heads;
  int splits;
};

// Writes this thread's share (dims 8d + 2t, 8d + 2t + 1) of one row.
// m, l: the row's max (log2 units) and full sum; l == 0 means no key was
// seen (an empty split): the partial is 0 with weight 0.
template <int kHeadDim>
__device__ __forceinline__ void store_row(const OutputArgs& a, int split, int64_t token, int head, float m, float l,
                                          const float (&o)[kHeadDim / 8][4], int half, int t) {
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const int64_t row = token * a.n_heads + head;
  if (a.splits == 1) {
    bf16* dst = a.out + row * kHeadDim + 2 * t;
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d)
      *reinterpret_cast<uint32_t*>(dst + 8 * d) = pack_bf16(o[d][2 * half] * inv, o[d][2 * half + 1] * inv);
  } else {
    const int64_t prow = int64_t(split) * a.n_tokens * a.n_heads + row;
    float* dst = a.part_o + prow * kHeadDim + 2 * t;
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d)
      *reinterpret_cast<float2*>(dst + 8 * d) = make_float2(o[d][2 * half] * inv, o[d][2 * half + 1] * inv);
    if (t == 0) a.part_lse[prow] = l > 0.0f ? m + __log2f(l) : -INFINITY;
  }
}

}  // namespace kite::cuda::attn
