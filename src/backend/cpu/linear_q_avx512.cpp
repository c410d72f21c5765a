// linear_q for AVX-512 (F, BW, VL, DQ): the structure of linear_q_avx2.cpp
// with 16 lanes and masked tails.
//  - decode (n <= 4): Int4 and NF4 codes index a 16-entry table of the
//    group's weight values held in one register (vpermps), so they need no
//    per-group rescaling; Int8 widens codes into per-group accumulators; FP8
//    places each byte as an F16 and widens with vcvtph2ps.
//  - prefill (n > 4): F32 tiles (kTileRows x kChunkCols) and 4 x 4
//    register-blocked micro-kernels.
//  - Int8Token: vpmaddubsw on |w| and x negated where w < 0 (mask), int32 sums.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/linear_q_kernels.h"
#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"

#define KQ_INLINE KITE_TARGET_AVX512 inline __attribute__((always_inline))

namespace kite::cpu {

namespace {

template <int R>
constexpr int kAcc = R >= 3 ? 1 : 4 / R;

alignas(64) constexpr float kIota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Lanes [0, n) for n < 16.
KQ_INLINE __mmask16 first16(int64_t n) { return __mmask16((1u << n) - 1u); }

KQ_INLINE __m512 i8x16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
KQ_INLINE __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 E4M3 codes -> their values / 256, as e4m3x8 in linear_q_avx2.cpp.
// (The sign-extended byte shifted left by 7 has the sign at bit 15 and
// exponent and mantissa at bits 13..7; bit 14, a copy of the sign, is cleared.)
KQ_INLINE __m512 e4m3x16(__m128i b) {
  const __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
  return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16(int16_t(0xBFFF))));
}

// 16 bytes = 32 4-bit codes -> x'[0..15] (low nibbles), x'[16..31] (high),
// as indices for vpermps, which reads only their low 4 bits.
KQ_INLINE void u4x32(const uint8_t* p, __m512i v[2]) {
  v[0] = _mm512_cvtepu8_epi32(load16(p));
  v[1] = _mm512_srli_epi32(v[0], 4);
}

// The 16 weight values of group g of row j (Int4: (u - z) * s, Nf4: table * absmax).
KQ_INLINE __m512 group_lut(const LinearQArgs& a, int64_t j, int64_t g) {
  const int64_t at = j * a.groups + g;
  const __m512 s = _mm512_set1_ps(a.scales[at]);
  if (a.scheme == QuantScheme::Nf4) return _mm512_mul_ps(_mm512_loadu_ps(kNf4Table.data()), s);
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(kIota), _mm512_set1_ps(a.zeros[at])), s);
}

inline float lut_at(const LinearQArgs& a, int64_t j, int64_t g, uint8_t u) {
  const int64_t at = j * a.groups + g;
  return a.scheme == QuantScheme::Nf4 ? kNf4Table[u] * a.scales[at] : (float(u) - a.zeros[at]) * a.scales[at];
}

// ---- decode: dot products of weight row j with x rows [i0, i0 + R) ---------

template <int R>
KITE_TARGET_AVX512 void dots_int8(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
  const float* s = a.scales + j * groups;
  const float* x[R];
  __m512 tot[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * in, tot[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < A; ++u) acc[r][u] = _mm512_setzero_ps();
    int64_t k = g * gl;
    const int64_t e = k + gl;
    for (; k + 16 * A <= e; k += 16 * A)
      for (int u = 0; u < A; ++u) {
        const __m512 w = i8x16(load16(q + k + 16 * u));
        for (int r = 0; r < R; ++r) acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + k + 16 * u), w, acc[r][u]);
      }
    for (; k + 16 <= e; k += 16) {
      const __m512 w = i8x16(load16(q + k));
      for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + k), w, acc[r][0]);
    }
    if (k < e) {
      const __mmask16 m = first16(e - k);
      const __m512 w = i8x16(_mm_maskz_loadu_epi8(m, q + k));
      for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x[r] + k), w, acc[r][0]);
    }
    const __m512 sv = _mm512_set1_ps(s[g]);
    for (int r = 0; r < R; ++r) {
      for (int u = 1; u < A; ++u) acc[r][0] = _mm512_add_ps(acc[r][0], acc[r][u]);
      tot[r] = _mm512_fmadd_ps(acc[r][0], sv, tot[r]);
    }
  }
  for (int r = 0; r < R; ++r) d[r] = _mm512_reduce_add_ps(tot[r]);
}

// Int4 and Nf4: codes looked up in the group's table, one running sum.
template <int R>
KITE_TARGET_AVX512 void dots_4bit(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in, gl = a.group, groups = a.groups, full = gl / kNibbleBlock * kNibbleBlock;
  const uint8_t* row = a.q + j * (in / 2);
  const float* x[R];
  __m512 acc[R][A];
  float ts[R];
  for (int r = 0; r < R; ++r) {
    x[r] = a.x + (i0 + r) * in, ts[r] = 0.0f;
    for (int u = 0; u < A; ++u) acc[r][u] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t g0 = g * gl;
    const __m512 lut = group_lut(a, j, g);
    int64_t b = g0;
    for (; b + 2 * kNibbleBlock <= g0 + full; b += 2 * kNibbleBlock) {  // two blocks: 4 vectors
      __m512i v[4];
      u4x32(row + b / 2, v);
      u4x32(row + b / 2 + kNibbleBlock / 2, v + 2);
      for (int t = 0; t < 4; ++t) {
        const __m512 w = _mm512_permutexvar_ps(v[t], lut);
        for (int r = 0; r < R; ++r)
          acc[r][t % A] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + b + 16 * t), w, acc[r][t % A]);
      }
    }
    if (b < g0 + full) {
      __m512i v[2];
      u4x32(row + b / 2, v);
      for (int t = 0; t < 2; ++t) {
        const __m512 w = _mm512_permutexvar_ps(v[t], lut);
        for (int r = 0; r < R; ++r)
          acc[r][t % A] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + b + 16 * t), w, acc[r][t % A]);
      }
    }
    for (int64_t k = g0 + full; k < g0 + gl; ++k) {
      const float w = lut_at(a, j, g, get_nibble(row, k));
      for (int r = 0; r < R; ++r) ts[r] += x[r][k] * w;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 1; u < A; ++u) acc[r][0] = _mm512_add_ps(acc[r][0], acc[r][u]);
    d[r] = _mm512_reduce_add_ps(acc[r][0]) + ts[r];
  }
}

template <int R>
KITE_TARGET_AVX512 void dots_fp8(const LinearQArgs& a, int64_t i0, int64_t j, float* d) {
  constexpr int A = kAcc<R>;
  const int64_t in = a.in;
  const uint8_t* q = a.q + j * in;
  const float* x[R];
  __m512 acc[R][A];
  for (int r = 0; r < R; ++r) {
    x[r] = a.x + (i0 + r) * in;
    for (int u = 0; u < A; ++u) acc[r][u] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 * A <= in; k += 16 * A)
    for (int u = 0; u < A; ++u) {
      const __m512 w = e4m3x16(load16(q + k + 16 * u));
      for (int r = 0; r < R; ++r) acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + k + 16 * u), w, acc[r][u]);
    }
  for (; k + 16 <= in; k += 16) {
    const __m512 w = e4m3x16(load16(q + k));
    for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + k), w, acc[r][0]);
  }
  if (k < in) {
    const __mmask16 m = first16(in - k);
    const __m512 w = e4m3x16(_mm_maskz_loadu_epi8(m, q + k));
    for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x[r] + k), w, acc[r][0]);
  }
  const float s = a.scales[a.per_channel ? j : 0] * 256.0f;
  for (int r = 0; r < R; ++r) {
    for (int u = 1; u < A; ++u) acc[r][0] = _mm512_add_ps(acc[r][0], acc[r][u]);
    d[r] = _mm512_reduce_add_ps(acc[r][0]) * s;
  }
}

template <int R>
KITE_TARGET_AVX512 void cols_direct(const LinearQArgs& a, int64_t j0, int64_t j1) {
  float d[R];
  for (int64_t j = j0; j < j1; ++j) {
    switch (a.scheme) {
      case QuantScheme::Int8: dots_int8<R>(a, 0, j, d); break;
      case QuantScheme::Int4:
      case QuantScheme::Nf4: dots_4bit<R>(a, 0, j, d); break;
      case QuantScheme::Fp8: dots_fp8<R>(a, 0, j, d); break;
      case QuantScheme::Dense: return;
    }
    for (int r = 0; r < R; ++r) a.y[r * a.out + j] = finish_dot(a, r, j, d[r]);
  }
}

// ---- prefill: dequantized tiles and an F32 micro-kernel --------------------

// Weight row j, packed columns [k0, k1), as F32 (dequantize()'s values) in x' order.
KITE_TARGET_AVX512 void decode_span(const LinearQArgs& a, int64_t j, int64_t k0, int64_t k1, float* o) {
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  if (a.scheme == QuantScheme::Fp8) {
    const uint8_t* q = a.q + j * in;
    const __m512 s = _mm512_set1_ps(a.scales[a.per_channel ? j : 0]), k256 = _mm512_set1_ps(256.0f);
    for (int64_t k = k0; k < k1; k += 16) {
      const __mmask16 m = k + 16 <= k1 ? __mmask16(0xFFFF) : first16(k1 - k);
      const __m512 w = e4m3x16(_mm_maskz_loadu_epi8(m, q + k));
      _mm512_mask_storeu_ps(o + k - k0, m, _mm512_mul_ps(_mm512_mul_ps(w, k256), s));
    }
    return;
  }
  for (int64_t g = k0 / gl; g * gl < k1; ++g) {
    const int64_t b0 = std::max(k0, g * gl), b1 = std::min(k1, (g + 1) * gl);
    if (a.scheme == QuantScheme::Int8) {
      const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
      const __m512 s = _mm512_set1_ps(a.scales[j * groups + g]);
      for (int64_t k = b0; k < b1; k += 16) {
        const __mmask16 m = k + 16 <= b1 ? __mmask16(0xFFFF) : first16(b1 - k);
        _mm512_mask_storeu_ps(o + k - k0, m, _mm512_mul_ps(i8x16(_mm_maskz_loadu_epi8(m, q + k)), s));
      }
      continue;
    }
    // 4-bit: b0 starts a 32-block (chunks hold whole blocks or whole groups).
    const uint8_t* row = a.q + j * (in / 2);
    const int64_t full_end = g * gl + gl / kNibbleBlock * kNibbleBlock;
    const __m512 lut = group_lut(a, j, g);
    int64_t k = b0;
    for (; k + kNibbleBlock <= std::min(b1, full_end); k += kNibbleBlock) {
      __m512i v[2];
      u4x32(row + k / 2, v);
      _mm512_storeu_ps(o + k - k0, _mm512_permutexvar_ps(v[0], lut));
      _mm512_storeu_ps(o + k - k0 + 16, _mm512_permutexvar_ps(v[1], lut));
    }
    for (; k < b1; ++k) o[k - k0] = lut_at(a, j, g, get_nibble(row, k));
  }
}

// 16 lanes folded to 4 partial sums.
KQ_INLINE __m128 fold4(__m512 v) {
  __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Sums of the 16 lanes of four vectors, as one 4-lane vector.
KQ_INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  return _mm_hadd_ps(_mm_hadd_ps(fold4(a), fold4(b)), _mm_hadd_ps(fold4(c), fold4(d)));
}

// y[i0 + r, j + c] (+)= x'[i0 + r, k0:k0 + kc] . tile[c, 0:kc].
template <int R, int C>
KITE_TARGET_AVX512 __attribute__((noinline)) void micro(const LinearQArgs& a, int64_t i0, int64_t k0, int64_t kc,
                                                        const float* tile, int64_t j, bool first) {
  const float* x[R];
  const float* w[C];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * a.in + k0;
  for (int c = 0; c < C; ++c) w[c] = tile + c * kc;
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < kc; t += 16) {
    const __mmask16 m = t + 16 <= kc ? __mmask16(0xFFFF) : first16(kc - t);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(m, x[r] + t);
    for (int c = 0; c < C; ++c) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w[c] + t);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    __m512 v[4];
    for (int c = 0; c < 4; ++c) v[c] = c < C ? acc[r][c] : _mm512_setzero_ps();
    alignas(16) float s[4];
    _mm_store_ps(s, reduce4(v[0], v[1], v[2], v[3]));
    float* y = a.y + (i0 + r) * a.out + j;
    for (int c = 0; c < C; ++c) y[c] = first ? s[c] : y[c] + s[c];
  }
}

template <int R>
KITE_TARGET_AVX512 void micro_row(const LinearQArgs& a, int64_t i0, int64_t k0, int64_t kc, const float* tile,
                                  int64_t t0, int64_t rows, bool first) {
  int64_t c = 0;
  for (; c + 4 <= rows; c += 4) micro<R, 4>(a, i0, k0, kc, tile + c * kc, t0 + c, first);
  switch (rows - c) {
    case 1: micro<R, 1>(a, i0, k0, kc, tile + c * kc, t0 + c, first); break;
    case 2: micro<R, 2>(a, i0, k0, kc, tile + c * kc, t0 + c, first); break;
    case 3: micro<R, 3>(a, i0, k0, kc, tile + c * kc, t0 + c, first); break;
    default: break;
  }
}

KITE_TARGET_AVX512 void cols_tiled(const LinearQArgs& a, int64_t j0, int64_t j1) {
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

// dots[r * groups + g] = sum over group g of w[j] * xq[i0 + r] (exact int32).
template <int R>
KITE_TARGET_AVX512 void int_dots(const LinearQArgs& a, int64_t i0, int64_t j, int32_t* dots) {
  const int64_t in = a.in, gl = a.group, groups = a.groups;
  const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
  const int8_t* x[R];
  for (int r = 0; r < R; ++r) x[r] = a.xq + (i0 + r) * in;
  const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const int64_t e = (g + 1) * gl;
    for (int64_t k = g * gl; k < e; k += 64) {
      const __mmask64 m = k + 64 <= e ? ~__mmask64(0) : (~__mmask64(0) >> (64 - (e - k)));
      const __m512i w = _mm512_maskz_loadu_epi8(m, q + k);
      const __m512i aw = _mm512_abs_epi8(w);
      const __mmask64 neg = _mm512_movepi8_mask(w);
      for (int r = 0; r < R; ++r) {
        const __m512i xv = _mm512_maskz_loadu_epi8(m, x[r] + k);
        const __m512i xs = _mm512_mask_sub_epi8(xv, neg, zero, xv);  // x * sign(w) where w != 0
        acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(aw, xs), ones));
      }
    }
    for (int r = 0; r < R; ++r) dots[r * groups + g] = _mm512_reduce_add_epi32(acc[r]);
  }
}

template <int R>
KITE_TARGET_AVX512 void int8_token_rows(const LinearQArgs& a, int64_t i0, int64_t t0, int64_t t1, int32_t* dots) {
  for (int64_t j = t0; j < t1; ++j) {
    int_dots<R>(a, i0, j, dots);
    for (int r = 0; r < R; ++r) a.y[(i0 + r) * a.out + j] = int8_token_finish(a, i0 + r, j, dots + r * a.groups);
  }
}

KITE_TARGET_AVX512 void cols_int8_token(const LinearQArgs& a, int64_t j0, int64_t j1) {
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

void linear_q_cols_avx512(const LinearQArgs& a, int64_t j0, int64_t j1) {
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
