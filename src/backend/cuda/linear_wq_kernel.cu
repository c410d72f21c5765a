// Device side of the weight-only quantized linear (W4A16, W8A16; host side:
// linear_wq_kernel.cpp, which documents the packed layout and the paths).
//
// Packed layout read here: codes row-major [out, kp] (Int4: kp / 2 bytes a
// row, two columns a byte, low nibble = even column; Int8: kp signed bytes a
// row), kp = in rounded up to 32 (padding codes 0); scales and zeros F32
// [out, ngroups], groups over packed columns. A "chunk" is the 16 bytes of
// codes a lane loads at once: 32 columns of Int4, 16 of Int8. The host only
// runs groups where every chunk lies in one group (group % 32 == 0 for Int4,
// % 16 for Int8, or group == in).
//
// Dequantization is bitwise the reference's F32 formula (core/quant_weight.cpp):
// a code byte c is moved into the mantissa of 2^23 (0x4B0000cc, one PRMT),
// so the float is 2^23 + c exactly and one subtraction gives the code as an
// exact small integer: Int4 sym: (2^23 + u) - (2^23 + 8) = u - 8; Int4 asym:
// ((2^23 + u) - 2^23) - z; Int8 (bytes ^ 0x80): (2^23 + q + 128) - (2^23 + 128)
// = q; then one multiply by the scale. No int-to-float conversions.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/dense_common.cuh"

namespace kite::cuda {

namespace {

using dense::bf16;

// Kind of codes (template argument).
constexpr int kInt4Sym = 0;   // zeros all 8
constexpr int kInt4Asym = 1;  // F32 zeros per group
constexpr int kInt8 = 2;

constexpr int kWarps = 4;  // per CTA, splitting K between them
// Output rows per CTA (each warp works on all of them). Every x value a lane
// loads (L1) serves kRows rows: x bytes per weight byte are 4 n / kRows for
// Int4, so at n = 16 L1 traffic is 16x the weight stream; 4 rows keep the
// accumulators (kRows * n) in registers. To be tuned by measurement.
constexpr int kRows = 4;
constexpr int kThreads = kWarps * 32;

// 2^23 + byte b (0..3) of `v`, as a float: exactly 8388608 + that byte.
__device__ __forceinline__ float magic_byte(uint32_t v, int b) {
  return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7650u + unsigned(b)));
}

// The two BF16 halves of a 32-bit word as floats (low half = lower column).
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

// Columns per 16-byte chunk and per 32-bit word of codes.
template <int kKind>
constexpr int chunk_cols() {
  return kKind == kInt8 ? 16 : 32;
}

// The 32-bit word `w` (0..3) of a chunk dequantized: Int4: 8 weights, Int8: 4.
template <int kKind>
__device__ __forceinline__ void dequant_word(uint32_t q, float s, float z, float* out) {
  if constexpr (kKind == kInt8) {
    const uint32_t v = q ^ 0x80808080u;  // signed byte -> q + 128
#pragma unroll
    for (int b = 0; b < 4; ++b) out[b] = (magic_byte(v, b) - 8388736.0f) * s;  // 2^23 + 128
  } else {
    const uint32_t lo = q & 0x0F0F0F0Fu;         // byte b: column 2b
    const uint32_t hi = (q >> 4) & 0x0F0F0F0Fu;  // byte b: column 2b + 1
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      if constexpr (kKind == kInt4Sym) {
        out[2 * b] = (magic_byte(lo, b) - 8388616.0f) * s;  // 2^23 + 8
        out[2 * b + 1] = (magic_byte(hi, b) - 8388616.0f) * s;
      } else {
        out[2 * b] = ((magic_byte(lo, b) - 8388608.0f) - z) * s;
        out[2 * b + 1] = ((magic_byte(hi, b) - 8388608.0f) - z) * s;
      }
    }
  }
}

// y[m, row] = sum_j x[m, j] W[row, j] (+ bias[row]) for m < n <= kMb.
// Grid: ceil(out / kRows) CTAs of kWarps warps. Lane l of warp w walks the
// chunks c = w * 32 + l, + kThreads, ...: a warp loads 512 consecutive bytes
// of each of the CTA's rows per step (16 bytes a lane, streamed past L1), and
// the x columns of its chunk (L1-cached: every CTA reads the same x). Each
// weight is dequantized once and multiplied with all n rows of x; partial
// sums are reduced by shuffles within the warp, then across the warps through
// shared memory, in a fixed order (deterministic).
// x: [n, ldx] BF16, ldx >= kp, 16-byte aligned rows; columns [in, kp) zero.
template <int kKind, int kMb, typename Y>
__global__ void __launch_bounds__(kThreads)
    wq_gemv_kernel(const uint8_t* __restrict__ q, int64_t q_ld, const float* __restrict__ scales,
                   const float* __restrict__ zeros, int ngroups, int group, int nchunks, const bf16* __restrict__ x,
                   int64_t ldx, const float* __restrict__ bias, Y* __restrict__ y, int n, int out) {
  constexpr int kCols = chunk_cols<kKind>();
  constexpr int kWordCols = kCols / 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRows;
  float acc[kRows][kMb];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < kMb; ++m) acc[r][m] = 0.0f;

  for (int c = warp * 32 + lane; c < nchunks; c += kThreads) {
    const int g = (c * kCols) / group;
    uint4 wq[kRows];
    float s[kRows], z[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + r;
      if (row < out) {
        wq[r] = __ldcs(reinterpret_cast<const uint4*>(q + int64_t(row) * q_ld) + c);
        s[r] = __ldg(scales + int64_t(row) * ngroups + g);
        z[r] = kKind == kInt4Asym ? __ldg(zeros + int64_t(row) * ngroups + g) : 0.0f;
      } else {
        wq[r] = make_uint4(0, 0, 0, 0);
        s[r] = 0.0f;
        z[r] = 0.0f;
      }
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      float wf[kRows][kWordCols];
#pragma unroll
      for (int r = 0; r < kRows; ++r) dequant_word<kKind>(word_of(wq[r], w), s[r], z[r], wf[r]);
      const int64_t col = int64_t(c) * kCols + w * kWordCols;
#pragma unroll
      for (int m = 0; m < kMb; ++m) {
        if (m >= n) break;
        float xf[kWordCols];
        if constexpr (kWordCols == 8) {
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + int64_t(m) * ldx + col));
          xf[0] = bf16_lo(xv.x), xf[1] = bf16_hi(xv.x), xf[2] = bf16_lo(xv.y), xf[3] = bf16_hi(xv.y);
          xf[4] = bf16_lo(xv.z), xf[5] = bf16_hi(xv.z), xf[6] = bf16_lo(xv.w), xf[7] = bf16_hi(xv.w);
        } else {
          const uint2 xv = __ldg(reinterpret_cast<const uint2*>(x + int64_t(m) * ldx + col));
          xf[0] = bf16_lo(xv.x), xf[1] = bf16_hi(xv.x), xf[2] = bf16_lo(xv.y), xf[3] = bf16_hi(xv.y);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int k = 0; k < kWordCols; ++k) acc[r][m] = fmaf(xf[k], wf[r][k], acc[r][m]);
      }
    }
  }

  __shared__ float red[kWarps][kRows * kMb];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < kMb; ++m) {
      const float v = dense::warp_sum(acc[r][m]);
      if (lane == 0) red[warp][r * kMb + m] = v;
    }
  __syncthreads();
  for (int t = threadIdx.x; t < kRows * kMb; t += kThreads) {
    const int r = t / kMb, m = t % kMb, row = row0 + r;
    if (row >= out || m >= n) continue;
    float v = red[0][t];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v += red[w][t];
    if (bias) v += bias[row];
    y[int64_t(m) * out + row] = dense::from_float<Y>(v);
  }
}

template <int kKind, typename Y>
cudaError_t launch_gemv_mb(const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros, int ngroups,
                           int group, int nchunks, const bf16* x, int64_t ldx, const float* bias, Y* y, int n, int out,
                           cudaStream_t stream) {
  const dim3 grid(unsigned((out + kRows - 1) / kRows));
#define KITE_WQ_LAUNCH(MB)                                                                                       \
  wq_gemv_kernel<kKind, MB, Y>                                                                                   \
      <<<grid, kThreads, 0, stream>>>(q, q_ld, scales, zeros, ngroups, group, nchunks, x, ldx, bias, y, n, out); \
  break
  switch (n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : n <= 8 ? 8 : 16) {
    case 1: KITE_WQ_LAUNCH(1);
    case 2: KITE_WQ_LAUNCH(2);
    case 4: KITE_WQ_LAUNCH(4);
    case 8: KITE_WQ_LAUNCH(8);
    default: KITE_WQ_LAUNCH(16);
  }
#undef KITE_WQ_LAUNCH
  return cudaGetLastError();
}

template <int kKind>
cudaError_t launch_gemv_y(const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros, int ngroups,
                          int group, int nchunks, const bf16* x, int64_t ldx, const float* bias, void* y, bool y_f32,
                          int n, int out, cudaStream_t stream) {
  if (y_f32)
    return launch_gemv_mb<kKind>(q, q_ld, scales, zeros, ngroups, group, nchunks, x, ldx, bias, static_cast<float*>(y),
                                 n, out, stream);
  return launch_gemv_mb<kKind>(q, q_ld, scales, zeros, ngroups, group, nchunks, x, ldx, bias, static_cast<bf16*>(y), n,
                               out, stream);
}

// xs[m, j] = x[m, perm ? perm[j] : j] for j < in, 0 for in <= j < kp.
__global__ void wq_gather_kernel(const bf16* __restrict__ x, int64_t ldx, const int32_t* __restrict__ perm,
                                 bf16* __restrict__ xs, int64_t n, int64_t in, int64_t kp) {
  const int64_t total = n * kp;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / kp, j = i - m * kp;
    bf16 v = __float2bfloat16_rn(0.0f);
    if (j < in) v = x[m * ldx + (perm ? perm[j] : j)];
    xs[i] = v;
  }
}

// w[o, perm ? perm[j] : j] = bf16(W[o, j]) for the packed column j, with
// W[o, j] = (u - z) * s (Int4) or q * s (Int8) in F32 as the reference
// computes it. Eight consecutive packed columns per thread (one 32-bit word of
// Int4 codes, two of Int8: aligned, kp being a multiple of 32); scale and zero
// looked up per column, so any group works.
template <int kKind>
__global__ void wq_dequant_kernel(const uint8_t* __restrict__ q, int64_t q_ld, const float* __restrict__ scales,
                                  const float* __restrict__ zeros, int64_t ngroups, int64_t group,
                                  const int32_t* __restrict__ perm, bf16* __restrict__ w, int64_t out, int64_t in) {
  const int64_t blocks_per_row = (in + 7) / 8, total = out * blocks_per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = i / blocks_per_row, j0 = (i - o * blocks_per_row) * 8;
    const uint8_t* row = q + o * q_ld;
    uint2 c;  // Int4: c.x holds the 8 codes; Int8: c.x columns j0..j0+3, c.y the next 4
    if constexpr (kKind == kInt8)
      c = *reinterpret_cast<const uint2*>(row + j0);
    else
      c.x = *reinterpret_cast<const uint32_t*>(row + j0 / 2), c.y = 0;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int64_t j = j0 + k < in ? j0 + k : in - 1;  // past the row's end: computed, not stored
      const int64_t g = o * ngroups + j / group;
      if constexpr (kKind == kInt8) {
        const int8_t code = int8_t(((k < 4 ? c.x : c.y) >> (8 * (k & 3))) & 0xFFu);
        v[k] = float(code) * scales[g];
      } else {
        const float u = float((c.x >> (4 * k)) & 0xFu);
        const float z = kKind == kInt4Asym ? zeros[g] : 8.0f;
        v[k] = (u - z) * scales[g];
      }
    }
    bf16* wr = w + o * in;
    if (!perm && in % 8 == 0) {
      dense::Pack<bf16> p;
#pragma unroll
      for (int k = 0; k < 8; ++k) p.v[k] = __float2bfloat16_rn(v[k]);
      dense::store_pack(wr + j0, p);
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (j0 + k < in) wr[perm ? perm[j0 + k] : j0 + k] = __float2bfloat16_rn(v[k]);
    }
  }
}

}  // namespace

// ---- launchers (declared in linear_wq_kernel.cpp) ---------------------------
// kind: 0 Int4 symmetric, 1 Int4 with zeros, 2 Int8. See the kernels above for
// the layouts. Every pointer is device memory on the stream's device.

cudaError_t launch_wq_gemv(int kind, const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros,
                           int64_t ngroups, int64_t group, int64_t in, const void* x, int64_t ldx, const float* bias,
                           void* y, bool y_f32, int64_t n, int64_t out, cudaStream_t stream) {
  if (n <= 0 || out <= 0) return cudaSuccess;
  if (n > 16 || out > 0x7fffffff || in > 0x3fffffff) return cudaErrorInvalidValue;
  const bf16* xb = static_cast<const bf16*>(x);
  switch (kind) {
    case kInt4Sym:
      return launch_gemv_y<kInt4Sym>(q, q_ld, scales, zeros, int(ngroups), int(group), int((in + 31) / 32), xb, ldx,
                                     bias, y, y_f32, int(n), int(out), stream);
    case kInt4Asym:
      return launch_gemv_y<kInt4Asym>(q, q_ld, scales, zeros, int(ngroups), int(group), int((in + 31) / 32), xb, ldx,
                                      bias, y, y_f32, int(n), int(out), stream);
    case kInt8:
      return launch_gemv_y<kInt8>(q, q_ld, scales, zeros, int(ngroups), int(group), int((in + 15) / 16), xb, ldx, bias,
                                  y, y_f32, int(n), int(out), stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_wq_gather(const void* x, int64_t ldx, const int32_t* perm, void* xs, int64_t n, int64_t in,
                             int64_t kp, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  wq_gather_kernel<<<dense::grid_for(n * kp, 256, 4096), 256, 0, stream>>>(static_cast<const bf16*>(x), ldx, perm,
                                                                           static_cast<bf16*>(xs), n, in, kp);
  return cudaGetLastError();
}

cudaError_t launch_wq_dequant(int kind, const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros,
                              int64_t ngroups, int64_t group, const int32_t* perm, void* w, int64_t out, int64_t in,
                              cudaStream_t stream) {
  if (out <= 0 || in <= 0) return cudaSuccess;
  const unsigned grid = dense::grid_for(out * ((in + 7) / 8), 256, 1 << 16);
  bf16* wb = static_cast<bf16*>(w);
  switch (kind) {
    case kInt4Sym:
      wq_dequant_kernel<kInt4Sym><<<grid, 256, 0, stream>>>(q, q_ld, scales, zeros, ngroups, group, perm, wb, out, in);
      break;
    case kInt4Asym:
      wq_dequant_kernel<kInt4Asym><<<grid, 256, 0, stream>>>(q, q_ld, scales, zeros, ngroups, group, perm, wb, out, in);
      break;
    case kInt8:
      wq_dequant_kernel<kInt8><<<grid, 256, 0, stream>>>(q, q_ld, scales, zeros, ngroups, group, perm, wb, out, in);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace kite::cuda
