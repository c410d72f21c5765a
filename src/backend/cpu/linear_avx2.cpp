// linear for AVX2 + FMA + F16C: register-blocked micro-kernels of R x rows by
// C weight rows (16 ymm registers: 8 accumulators, 4 x vectors, 1 weight),
// F32 accumulation, weights widened to F32 on the fly, scalar k tail.
#include <immintrin.h>

#include "backend/cpu/linear_kernels.h"
#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"
#include "core/error.h"

namespace kite::cpu {

namespace {

constexpr int kR = 4;  // x rows per micro-kernel
constexpr int kC = 2;  // weight rows per micro-kernel

template <DType WT>
KITE_TARGET_AVX2 inline __attribute__((always_inline)) __m256 load_w(const void* w, int64_t idx) {
  if constexpr (WT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + idx);
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + idx));
    if constexpr (WT == DType::BF16)
      return bf16x8_to_f32(h);
    else
      return _mm256_cvtph_ps(h);
  }
}

template <DType WT>
inline float w_at(const void* w, int64_t idx) {
  if constexpr (WT == DType::F32)
    return static_cast<const float*>(w)[idx];
  else if constexpr (WT == DType::BF16)
    return bf16_to_f32(static_cast<const uint16_t*>(w)[idx]);
  else
    return f16_to_f32(static_cast<const uint16_t*>(w)[idx]);
}

template <int R, int C, DType WT>
KITE_TARGET_AVX2 void micro(const LinearArgs& a, int64_t i0, int64_t j) {
  const int64_t k = a.k;
  const size_t es = dtype_size(WT);
  const float* x[R];
  const void* w[C];
  for (int r = 0; r < R; ++r) x[r] = a.x + (i0 + r) * k;
  for (int c = 0; c < C; ++c) w[c] = static_cast<const char*>(a.w) + size_t(j + c) * size_t(k) * es;
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= k; t += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x[r] + t);
    for (int c = 0; c < C; ++c) {
      const __m256 wv = load_w<WT>(w[c], t);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* y = a.y + (i0 + r) * a.m + j;
    for (int c = 0; c < C; ++c) {
      float s = hsum_avx2(acc[r][c]);
      for (int64_t u = t; u < k; ++u) s += x[r][u] * w_at<WT>(w[c], u);
      y[c] = s + (a.bias ? a.bias[j + c] : 0.0f);
    }
  }
}

template <int R, DType WT>
KITE_TARGET_AVX2 void row_block(const LinearArgs& a, int64_t i0, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kC <= j1; j += kC) micro<R, kC, WT>(a, i0, j);
  if (j < j1) micro<R, 1, WT>(a, i0, j);
}

template <DType WT>
KITE_TARGET_AVX2 void cols(const LinearArgs& a, int64_t j0, int64_t j1) {
  const int64_t tile = linear_tile_rows(a.k, dtype_size(WT), kC);
  for (int64_t t0 = j0; t0 < j1; t0 += tile) {
    const int64_t t1 = t0 + tile < j1 ? t0 + tile : j1;
    int64_t i = 0;
    for (; i + kR <= a.n; i += kR) row_block<kR, WT>(a, i, t0, t1);
    switch (a.n - i) {
      case 1: row_block<1, WT>(a, i, t0, t1); break;
      case 2: row_block<2, WT>(a, i, t0, t1); break;
      case 3: row_block<3, WT>(a, i, t0, t1); break;
      default: break;
    }
  }
}

}  // namespace

void linear_cols_avx2(const LinearArgs& a, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::F32: cols<DType::F32>(a, j0, j1); break;
    case DType::BF16: cols<DType::BF16>(a, j0, j1); break;
    case DType::F16: cols<DType::F16>(a, j0, j1); break;
    default: KITE_CHECK(false, "linear: unsupported weight dtype {}", dtype_name(a.wt));
  }
}

}  // namespace kite::cpu
