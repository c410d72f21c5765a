// linear for AVX-512: register-blocked micro-kernels of R x rows by C weight
// rows, F32 accumulation over the full k (masked tail), weights widened to
// F32 on the fly (bf16: a 16-bit shift; f16: vcvtph2ps).
#include <immintrin.h>

#include "backend/cpu/linear_kernels.h"
#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"
#include "core/error.h"

namespace kite::cpu {

namespace {

constexpr int kR = 4;  // x rows per micro-kernel
constexpr int kC = 4;  // weight rows per micro-kernel

template <DType WT>
KITE_TARGET_AVX512 inline __attribute__((always_inline)) __m512 load_w(const void* w, int64_t idx) {
  if constexpr (WT == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + idx);
  } else {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + idx));
    if constexpr (WT == DType::BF16)
      return bf16x16_to_f32(h);
    else
      return _mm512_cvtph_ps(h);
  }
}

template <DType WT>
KITE_TARGET_AVX512 inline __attribute__((always_inline)) __m512 load_w_masked(const void* w, int64_t idx, __mmask16 m) {
  if constexpr (WT == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + idx);
  } else {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + idx);
    if constexpr (WT == DType::BF16)
      return bf16x16_to_f32(h);
    else
      return _mm512_cvtph_ps(h);
  }
}

// 16 lanes folded to 4 partial sums.
KITE_TARGET_AVX512 inline __attribute__((always_inline)) __m128 fold4(__m512 v) {
  __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Sums of the 16 lanes of four vectors, as one 4-lane vector.
KITE_TARGET_AVX512 inline __attribute__((always_inline)) __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  return _mm_hadd_ps(_mm_hadd_ps(fold4(a), fold4(b)), _mm_hadd_ps(fold4(c), fold4(d)));
}

// y[i, j + c] for i < R, c < C (C == kC, or fewer at the end of a column range).
template <int R, int C, DType WT>
KITE_TARGET_AVX512 void micro(const LinearArgs& a, int64_t i0, int64_t j) {
  const int64_t k = a.k;
  const size_t es = dtype_size(WT);
  const float* x[R];
  const void* w[C];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * k;
  for (int c = 0; c < C; ++c) w[c] = static_cast<const char*>(a.w) + size_t(j + c) * size_t(k) * es;
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= k; t += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x[r] + t);
    for (int c = 0; c < C; ++c) {
      const __m512 wv = load_w<WT>(w[c], t);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  if (t < k) {
    const __mmask16 m = __mmask16((1u << (k - t)) - 1u);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(m, x[r] + t);
    for (int c = 0; c < C; ++c) {
      const __m512 wv = load_w_masked<WT>(w[c], t, m);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    __m512 v[4];
    for (int c = 0; c < C; ++c) v[c] = acc[r][c];
    for (int c = C; c < 4; ++c) v[c] = _mm512_setzero_ps();
    alignas(16) float out[4];
    _mm_store_ps(out, reduce4(v[0], v[1], v[2], v[3]));
    float* y = a.y + (i0 + r) * a.m + j;
    for (int c = 0; c < C; ++c) y[c] = out[c] + (a.bias ? a.bias[j + c] : 0.0f);
  }
}

template <int R, DType WT>
KITE_TARGET_AVX512 void row_block(const LinearArgs& a, int64_t i0, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kC <= j1; j += kC) micro<R, kC, WT>(a, i0, j);
  switch (j1 - j) {
    case 1: micro<R, 1, WT>(a, i0, j); break;
    case 2: micro<R, 2, WT>(a, i0, j); break;
    case 3: micro<R, 3, WT>(a, i0, j); break;
    default: break;
  }
}

template <DType WT>
KITE_TARGET_AVX512 void cols(const LinearArgs& a, int64_t j0, int64_t j1) {
  const int64_t tile = linear_tile_rows(a.k, dtype_size(WT), kC);
  for (int64_t t0 = j0; t0 < j1; t0 += tile) {
    const int64_t t1 = t0 + tile < j1 ? t0 + tile : j1;
    int64_t i = 0;
    for (; i + kR <= a.n; i += kR) row_block<kR, WT>(a, i, t0, t1);
    switch (a.n - i) {
      case 1: row_block<1, WT>(a, i, t0, t1); break;
      case 2: row_block<2, WT>(a, i, t0, t1); break;
      case 3: row_block<3, WT>(a, i, t0, t1); break;
      case 4: row_block<4, WT>(a, i, t0, t1); break;
      case 5: row_block<5, WT>(a, i, t0, t1); break;
      default: break;
    }
  }
}

}  // namespace

void linear_cols_avx512(const LinearArgs& a, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::F32: cols<DType::F32>(a, j0, j1); break;
    case DType::BF16: cols<DType::BF16>(a, j0, j1); break;
    case DType::F16: cols<DType::F16>(a, j0, j1); break;
    default: KITE_CHECK(false, "linear: unsupported weight dtype {}", dtype_name(a.wt));
  }
}

}  // namespace kite::cpu
