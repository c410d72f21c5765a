// linear_q for AVX2 + FMA + F16C.
//  - decode (n <= 4): each weight row is widened in registers and multiplied
//    with every x row: Int8 codes and Int4 codes (vpmovzx + vcvtdq2ps) into
//    per-group accumulators scaled once per group (Int4's zero point folds in
//    as z * sum(x') per group); NF4 through a 16-entry table in two registers
//    (vpermps + blend) scaled per block; FP8 by placing each byte as an F16
//    and widening with vcvtph2ps (exact, subnormal codes included).
//  - prefill (n > 4): tiles of kTileRows weight rows x kChunkCols columns
//    (16 x 1024, 64 KiB) are dequantized to F32 and reused by 4 x 2
//    register-blocked F32 micro-kernels for every x row.
//  - Int8Token: vpmaddubsw on |w| and sign(x, w) (no int16 overflow, even for
//    w = -128), vpmaddwd to int32 per group.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/linear_q_kernels.h"
#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"

#define KQ_INLINE KITE_TARGET_AVX2 inline __attribute__((always_inline))

namespace kite::cpu {

namespace {

// Independent accumulators per x row: enough FMA chains to hide latency.
template <int R>
constexpr int kAcc = R >= 3 ? 1 : 4 / R;

KQ_INLINE __m256 i8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// 8 E4M3 codes -> their values / 256. Each byte goes to the high byte of a
// 16-bit lane, shifts right by one keeping the sign (bit 14 cleared): an F16
// with the same sign, exponent bits and mantissa bits, whose bias (15 vs 7)
// divides by 2^8. Subnormal codes map to F16 subnormals; both are exact.
// (The NaN codes 0x7f / 0xff read as +-480.)
KQ_INLINE __m256 e4m3x8(const uint8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i h = _mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), b), 1);
  return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16(int16_t(0xBFFF))));
}

// 16 E4M3 codes -> values / 256 of codes 0..7 and 8..15, as e4m3x8: the
// sign-extended byte shifted left by 7 has the sign at bit 15 and exponent
// and mantissa at bits 13..7; bit 14 (a copy of the sign) is cleared.
KQ_INLINE void e4m3x16(const uint8_t* p, __m256& lo, __m256& hi) {
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(int16_t(0xBFFF)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// 16 bytes = 32 4-bit codes -> 4 vectors of int32 codes in x' order:
// x'[0..7], x'[8..15] (low nibbles), x'[16..23], x'[24..31] (high nibbles).
KQ_INLINE void u4x32(const uint8_t* p, __m256i v[4]) {
  const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
  const __m256i m = _mm256_set1_epi32(0x0F);
  v[0] = _mm256_and_si256(b0, m);
  v[1] = _mm256_and_si256(b1, m);
  v[2] = _mm256_srli_epi32(b0, 4);
  v[3] = _mm256_srli_epi32(b1, 4);
}

// A 16-entry float table in two registers; lookup by int32 codes 0..15.
struct Lut16 {
  __m256 lo, hi;
};

KQ_INLINE __m256 lookup(const Lut16& t, __m256i idx) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx), _mm256_permutevar8x32_ps(t.hi, idx),
                          _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// The 16 weight values of group g of row j (Int4: (u - z) * s, Nf4: table * absmax).
KQ_INLINE Lut16 group_lut(const LinearQArgs& a, int64_t j, int64_t g) {
  const int64_t at = j * a.groups + g;
  const __m256 s = _mm256_set1_ps(a.scales[at]);
  if (a.scheme == QuantScheme::Nf4)
    return {_mm256_mul_ps(_mm256_loadu_ps(kNf4Table.data()), s),
            _mm256_mul_ps(_mm256_loadu_ps(kNf4Table.data() + 8), s)};
  const __m256 z = _mm256_set1_ps(a.zeros[at]);
  const __m256 lo = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), hi = _mm256_add_ps(lo, _mm256_set1_ps(8.0f));
  return {_mm256_mul_ps(_mm256_sub_ps(lo, z), s), _mm256_mul_ps(_mm256_sub_ps(hi, z), s)};
}

inline float lut_at(const LinearQArgs& a, int64_t j, int64_t g, uint8_t u) {
  const int64_t at = j * a.groups + g;
  return a.scheme == QuantScheme::Nf4 ? kNf4Table[u] * a.scales[at] : (float(u) - a.zeros[at]) * a.scales[at];
}

// ---- decode: dot products of weight row j with x rows [i0, i0 + R) ---------

template <int R>
KITE_TARGET_AVX2 void dots_int8(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
  const float* s = a.scales + j * groups;
  const float* x[R];
  __m256 tot[R];
  float st[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * in, tot[r] = _mm256_setzero_ps(), st[r] = 0.0f;
  for (int64_t g = 0; g < groups; ++g) {
    __m256 acc[R][A];
    float ts[R];
    for (int r = 0; r < R; ++r) {
      ts[r] = 0.0f;
      for (int u = 0; u < A; ++u) acc[r][u] = _mm256_setzero_ps();
    }
    int64_t k = g * gl;
    const int64_t e = k + gl;
    for (; k + 8 * A <= e; k += 8 * A)
      for (int u = 0; u < A; ++u) {
        const __m256 w = i8x8(q + k + 8 * u);
        for (int r = 0; r < R; ++r) acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + k + 8 * u), w, acc[r][u]);
      }
    for (; k + 8 <= e; k += 8) {
      const __m256 w = i8x8(q + k);
      for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + k), w, acc[r][0]);
    }
    for (; k < e; ++k)
      for (int r = 0; r < R; ++r) ts[r] += x[r][k] * float(q[k]);
    const __m256 sv = _mm256_set1_ps(s[g]);
    for (int r = 0; r < R; ++r) {
      for (int u = 1; u < A; ++u) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][u]);
      tot[r] = _mm256_fmadd_ps(acc[r][0], sv, tot[r]);
      st[r] += ts[r] * s[g];
    }
  }
  for (int r = 0; r < R; ++r) d[r] = hsum_avx2(tot[r]) + st[r];
}

// Int4: sum_g s_g * (sum_k x'_k u_k - z_g * sum_k x'_k).
template <int R>
KITE_TARGET_AVX2 void dots_int4(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in, gl = a.group, groups = a.groups, full = gl / kNibbleBlock * kNibbleBlock;
  const uint8_t* row = a.q + j * (in / 2);
  const float* s = a.scales + j * groups;
  const float* z = a.zeros + j * groups;
  const float* x[R];
  __m256 tot[R];
  float st[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * in, tot[r] = _mm256_setzero_ps(), st[r] = 0.0f;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t g0 = g * gl;
    __m256 acc[R][A];
    float ts[R];
    for (int r = 0; r < R; ++r) {
      ts[r] = 0.0f;
      for (int u = 0; u < A; ++u) acc[r][u] = _mm256_setzero_ps();
    }
    for (int64_t b = g0; b < g0 + full; b += kNibbleBlock) {
      __m256i v[4];
      u4x32(row + b / 2, v);
      for (int t = 0; t < 4; ++t) {
        const __m256 w = _mm256_cvtepi32_ps(v[t]);
        for (int r = 0; r < R; ++r)
          acc[r][t % A] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + b + 8 * t), w, acc[r][t % A]);
      }
    }
    for (int64_t k = g0 + full; k < g0 + gl; ++k)
      for (int r = 0; r < R; ++r) ts[r] += x[r][k] * float(get_nibble(row, k));
    const __m256 sv = _mm256_set1_ps(s[g]);
    for (int r = 0; r < R; ++r) {
      for (int u = 1; u < A; ++u) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][u]);
      tot[r] = _mm256_fmadd_ps(acc[r][0], sv, tot[r]);
      st[r] += s[g] * (ts[r] - z[g] * a.xsum[(i0 + r) * groups + g]);
    }
  }
  for (int r = 0; r < R; ++r) d[r] = hsum_avx2(tot[r]) + st[r];
}

// Nf4: the block's scaled table, looked up per code, one running sum.
template <int R>
KITE_TARGET_AVX2 void dots_nf4(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in, gl = a.group, groups = a.groups, full = gl / kNibbleBlock * kNibbleBlock;
  const uint8_t* row = a.q + j * (in / 2);
  const float* x[R];
  __m256 acc[R][A];
  float ts[R];
  for (int r = 0; r < R; ++r) {
    x[r] = a.x + (i0 + r) * in, ts[r] = 0.0f;
    for (int u = 0; u < A; ++u) acc[r][u] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t g0 = g * gl;
    const Lut16 lut = group_lut(a, j, g);
    for (int64_t b = g0; b < g0 + full; b += kNibbleBlock) {
      __m256i v[4];
      u4x32(row + b / 2, v);
      for (int t = 0; t < 4; ++t) {
        const __m256 w = lookup(lut, v[t]);
        for (int r = 0; r < R; ++r)
          acc[r][t % A] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + b + 8 * t), w, acc[r][t % A]);
      }
    }
    for (int64_t k = g0 + full; k < g0 + gl; ++k) {
      const float w = lut_at(a, j, g, get_nibble(row, k));
      for (int r = 0; r < R; ++r) ts[r] += x[r][k] * w;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 1; u < A; ++u) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][u]);
    d[r] = hsum_avx2(acc[r][0]) + ts[r];
  }
}

template <int R>
KITE_TARGET_AVX2 void dots_fp8(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in;
  const uint8_t* q = a.q + j * in;
  const float* x[R];
  __m256 acc[R][A];
  float ts[R];
  for (int r = 0; r < R; ++r) {
    x[r] = a.x + (i0 + r) * in, ts[r] = 0.0f;
    for (int u = 0; u < A; ++u) acc[r][u] = _mm256_setzero_ps();
  }
  constexpr int B = A > 1 ? A / 2 : 1;  // 16-code blocks per step
  int64_t k = 0;
  for (; k + 16 * B <= in; k += 16 * B)
    for (int u = 0; u < B; ++u) {
      __m256 w[2];
      e4m3x16(q + k + 16 * u, w[0], w[1]);
      for (int h = 0; h < 2; ++h)
        for (int r = 0; r < R; ++r) {
          __m256& c = acc[r][(2 * u + h) % A];
          c = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + k + 16 * u + 8 * h), w[h], c);
        }
    }
  for (; k + 8 <= in; k += 8) {
    const __m256 w = e4m3x8(q + k);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + k), w, acc[r][0]);
  }
  for (; k < in; ++k)
    for (int r = 0; r < R; ++r) ts[r] += x[r][k] * (fp8_e4m3_to_f32(q[k]) * (1.0f / 256.0f));
  const float s = a.scales[a.per_channel ? j : 0] * 256.0f;
  for (int r = 0; r < R; ++r) {
    for (int u = 1; u < A; ++u) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][u]);
    d[r] = (hsum_avx2(acc[r][0]) + ts[r]) * s;
  }
}

template <int R>
KITE_TARGET_AVX2 void cols_direct(const LinearQArgs& a, int64_t j0, int64_t j1) {
  float d[R];
  for (int64_t j = j0; j < j1; ++j) {
    switch (a.scheme) {
      case QuantScheme::Int8: dots_int8<R>(a, 0, j, d); break;
      case QuantScheme::Int4: dots_int4<R>(a, 0, j, d); break;
      case QuantScheme::Nf4: dots_nf4<R>(a, 0, j, d); break;
      case QuantScheme::Fp8: dots_fp8<R>(a, 0, j, d); break;
      case QuantScheme::Dense: return;
    }
    for (int r = 0; r < R; ++r) a.y[r * a.out + j] = finish_dot(a, r, j, d[r]);
  }
}

// ---- prefill: dequantized tiles and an F32 micro-kernel --------------------

// Weight row j, packed columns [k0, k1), as F32 (dequantize()'s values) in x' order.
KITE_TARGET_AVX2 void decode_span(const LinearQArgs& a, int64_t j, int64_t k0, int64_t k1, float* o) {
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  if (a.scheme == QuantScheme::Fp8) {
    const uint8_t* q = a.q + j * in;
    const float sc = a.scales[a.per_channel ? j : 0];
    const __m256 s = _mm256_set1_ps(sc), k256 = _mm256_set1_ps(256.0f);
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
      __m256 w[2];
      e4m3x16(q + k, w[0], w[1]);
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(o + k - k0 + 8 * h, _mm256_mul_ps(_mm256_mul_ps(w[h], k256), s));
    }
    for (; k + 8 <= k1; k += 8) _mm256_storeu_ps(o + k - k0, _mm256_mul_ps(_mm256_mul_ps(e4m3x8(q + k), k256), s));
    for (; k < k1; ++k) o[k - k0] = fp8_e4m3_to_f32(q[k]) * sc;
    return;
  }
  for (int64_t g = k0 / gl; g * gl < k1; ++g) {
    const int64_t b0 = std::max(k0, g * gl), b1 = std::min(k1, (g + 1) * gl);
    if (a.scheme == QuantScheme::Int8) {
      const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
      const float sc = a.scales[j * groups + g];
      const __m256 s = _mm256_set1_ps(sc);
      int64_t k = b0;
      for (; k + 8 <= b1; k += 8) _mm256_storeu_ps(o + k - k0, _mm256_mul_ps(i8x8(q + k), s));
      for (; k < b1; ++k) o[k - k0] = float(q[k]) * sc;
      continue;
    }
    // 4-bit: b0 starts a 32-block (chunks hold whole blocks or whole groups).
    const uint8_t* row = a.q + j * (in / 2);
    const int64_t full_end = g * gl + gl / kNibbleBlock * kNibbleBlock;
    const Lut16 lut = group_lut(a, j, g);
    int64_t k = b0;
    for (; k + kNibbleBlock <= std::min(b1, full_end); k += kNibbleBlock) {
      __m256i v[4];
      u4x32(row + k / 2, v);
      for (int t = 0; t < 4; ++t) _mm256_storeu_ps(o + k - k0 + 8 * t, lookup(lut, v[t]));
    }
    for (; k < b1; ++k) o[k - k0] = lut_at(a, j, g, get_nibble(row, k));
  }
}

// y[i0 + r, j + c] (+)= x'[i0 + r, k0:k0 + kc] . tile[c, 0:kc].
template <int R, int C>
KITE_TARGET_AVX2 __attribute__((noinline)) void micro(const LinearQArgs& a, int64_t i0, int64_t k0, int64_t kc,
                                                      const float* tile, int64_t j, bool first) {
  const float* x[R];
  const float* w[C];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * a.in + k0;
  for (int c = 0; c < C; ++c) w[c] = tile + c * kc;
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= kc; t += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x[r] + t);
    for (int c = 0; c < C; ++c) {
      const __m256 wv = _mm256_loadu_ps(w[c] + t);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* y = a.y + (i0 + r) * a.out + j;
    for (int c = 0; c < C; ++c) {
      float s = hsum_avx2(acc[r][c]);
      for (int64_t u = t; u < kc; ++u) s += x[r][u] * w[c][u];
      y[c] = first ? s : y[c] + s;
    }
  }
}

template <int R>
KITE_TARGET_AVX2 void micro_row(const LinearQArgs& a, int64_t i0, int64_t k0, int64_t kc, const float* tile, int64_t t0,
                                int64_t rows, bool first) {
  int64_t c = 0;
  for (; c + 2 <= rows; c += 2) micro<R, 2>(a, i0, k0, kc, tile + c * kc, t0 + c, first);
  if (c < rows) micro<R, 1>(a, i0, k0, kc, tile + c * kc, t0 + c, first);
}

KITE_TARGET_AVX2 void cols_tiled(const LinearQArgs& a, int64_t j0, int64_t j1) {
  const int64_t chunk = linear_q_chunk(a);
  std::vector<float> tile(size_t(kTileRows * std::min(chunk, a.in)));  // [rows, kc]
  for (int64_t t0 = j0; t0 < j1; t0 += kTileRows) {
    const int64_t rows = std::min(kTileRows, j1 - t0);
    for (int64_t k0 = 0; k0 < a.in; k0 += chunk) {
      const int64_t kc = std::min(chunk, a.in - k0);
      for (int64_t c = 0; c < rows; ++c) decode_span(a, t0 + c, k0, k0 + kc, tile.data() + c * kc);
      int64_t i = 0;
      for (; i + 4 <= a.n; i += 4) micro_row<4>(a, i, k0, kc, tile.data(), t0, rows, k0 == 0);
      switch (a.n - i) {
        case 1: micro_row<1>(a, i, k0, kc, tile.data(), t0, rows, k0 == 0); break;
        case 2: micro_row<2>(a, i, k0, kc, tile.data(), t0, rows, k0 == 0); break;
        case 3: micro_row<3>(a, i, k0, kc, tile.data(), t0, rows, k0 == 0); break;
        default: break;
      }
    }
    for (int64_t i = 0; i < a.n; ++i)
      for (int64_t j = t0; j < t0 + rows; ++j) a.y[i * a.out + j] = finish_dot(a, i, j, a.y[i * a.out + j]);
  }
}

// ---- Int8Token ----------------------------------------------------------------

KQ_INLINE int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// dots[r * groups + g] = sum over group g of w[j] * xq[i0 + r] (exact int32).
template <int R>
KITE_TARGET_AVX2 void int_dots(const LinearQArgs& a, int64_t i0, int64_t j, int32_t* dots) {
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
  const int8_t* x[R];
  for (int r = 0; r < R; ++r) x[r] = a.xq + (i0 + r) * in;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    int64_t k = g * gl;
    const int64_t e = k + gl;
    for (; k + 32 <= e; k += 32) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k));
      const __m256i aw = _mm256_abs_epi8(w);
      for (int r = 0; r < R; ++r) {
        const __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r] + k)), w);
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
      }
    }
    if (k + 16 <= e) {
      const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k));
      const __m128i aw = _mm_abs_epi8(w);
      for (int r = 0; r < R; ++r) {
        const __m128i xs = _mm_sign_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r] + k)), w);
        const __m128i p = _mm_madd_epi16(_mm_maddubs_epi16(aw, xs), _mm_set1_epi16(1));
        acc[r] = _mm256_add_epi32(acc[r], _mm256_inserti128_si256(_mm256_setzero_si256(), p, 0));
      }
      k += 16;
    }
    for (int r = 0; r < R; ++r) {
      int32_t t = hsum_epi32(acc[r]);
      for (int64_t u = k; u < e; ++u) t += int32_t(q[u]) * int32_t(x[r][u]);
      dots[r * groups + g] = t;
    }
  }
}

template <int R>
KITE_TARGET_AVX2 void int8_token_rows(const LinearQArgs& a, int64_t i0, int64_t t0, int64_t t1, int32_t* dots) {
  for (int64_t j = t0; j < t1; ++j) {
    int_dots<R>(a, i0, j, dots);
    for (int r = 0; r < R; ++r) a.y[(i0 + r) * a.out + j] = int8_token_finish(a, i0 + r, j, dots + r * a.groups);
  }
}

KITE_TARGET_AVX2 void cols_int8_token(const LinearQArgs& a, int64_t j0, int64_t j1) {
  std::vector<int32_t> dots(size_t(4 * a.groups));
  for (int64_t t0 = j0; t0 < j1; t0 += kTileRows) {  // a tile of weight rows stays in cache across x rows
    const int64_t t1 = std::min(j1, t0 + kTileRows);
    int64_t i = 0;
    for (; i + 4 <= a.n; i += 4) int8_token_rows<4>(a, i, t0, t1, dots.data());
    switch (a.n - i) {
      case 1: int8_token_rows<1>(a, i, t0, t1, dots.data()); break;
      case 2: int8_token_rows<2>(a, i, t0, t1, dots.data()); break;
      case 3: int8_token_rows<3>(a, i, t0, t1, dots.data()); break;
      default: break;
    }
  }
}

}  // namespace

void linear_q_cols_avx2(const LinearQArgs& a, int64_t j0, int64_t j1) {
  if (a.xq) {
    cols_int8_token(a, j0, j1);
    return;
  }
  static_assert(kDirectRows == 4, "cols_direct is instantiated for 1..4 rows");
  switch (a.n) {
    case 1: cols_direct<1>(a, j0, j1); break;
    case 2: cols_direct<2>(a, j0, j1); break;
    case 3: cols_direct<3>(a, j0, j1); break;
    case 4: cols_direct<4>(a, j0, j1); break;
    default: cols_tiled(a, j0, j1); break;
  }
}

}  // namespace kite::cpu
