// Vector primitives for AVX-512 (F, BW, VL, DQ). Every function carries the
// target attribute; nothing here runs unless the CPU reports AVX-512.
#include <immintrin.h>

#include <cmath>

#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"

namespace kite::cpu {

namespace {

KITE_TARGET_AVX512 inline __mmask16 tail_mask(int64_t rem) { return __mmask16((1u << rem) - 1u); }

KITE_TARGET_AVX512 float dot(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    __mmask16 m = tail_mask(n - i);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

KITE_TARGET_AVX512 float sum_squares(const float* x, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    s0 = _mm512_fmadd_ps(a, a, s0);
    s1 = _mm512_fmadd_ps(b, b, s1);
  }
  for (; i < n; i += 16) {
    __m512 a = _mm512_maskz_loadu_ps(tail_mask(n - i < 16 ? n - i : 16), x + i);
    s0 = _mm512_fmadd_ps(a, a, s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

KITE_TARGET_AVX512 void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  const __m512 vs = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs), _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(out + i, m, v);
  }
}

KITE_TARGET_AVX512 void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

KITE_TARGET_AVX512 void scale(float* y, float a, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, y + i)));
  }
}

KITE_TARGET_AVX512 float exp_sub_sum(float* x, float max, int64_t n) {
  const __m512 vmax = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));
    _mm512_mask_storeu_ps(x + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

KITE_TARGET_AVX512 void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    __m512 vg = _mm512_maskz_loadu_ps(m, g + i);
    __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), vg));
    __m512 s = _mm512_div_ps(vg, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

KITE_TARGET_AVX512 void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
  }
}

// 16 lanes folded to 4 partial sums.
KITE_TARGET_AVX512 inline __m128 fold4(__m512 v) {
  __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// One row of dot_rows with exactly the arithmetic each row of its four-row
// blocks gets, so a score does not depend on how the rows were grouped:
// hadd(hadd(f, f), hadd(f, f)) lane 0 is (f0 + f1) + (f2 + f3), as there.
KITE_TARGET_AVX512 inline float dot_row(const float* q, const float* k, int64_t n) {
  __m512 a = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
    a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, k + i), a);
  }
  const __m128 f = fold4(a);
  const __m128 h = _mm_hadd_ps(f, f);
  return _mm_cvtss_f32(_mm_hadd_ps(h, h));
}

KITE_TARGET_AVX512 void dot_rows(const float* q, const float* k, int64_t stride, int64_t rows, int64_t n, float* out) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    const float* k0 = k + j * stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i < 16 ? n - i : 16);
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
      a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + i), a0);
      a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + stride + i), a1);
      a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + 2 * stride + i), a2);
      a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + 3 * stride + i), a3);
    }
    _mm_storeu_ps(out + j, _mm_hadd_ps(_mm_hadd_ps(fold4(a0), fold4(a1)), _mm_hadd_ps(fold4(a2), fold4(a3))));
  }
  for (; j < rows; ++j) out[j] = dot_row(q, k + j * stride, n);
}

KITE_TARGET_AVX512 void weighted_rows_acc(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n,
                                          float* out) {
  // Columns in chunks of 64 kept in four registers across all rows.
  for (int64_t i = 0; i < n; i += 64) {
    const int64_t c = n - i < 64 ? n - i : 64;
    const __mmask16 m0 = tail_mask(c < 16 ? c : 16),
                    m1 = tail_mask(c < 16   ? 0
                                   : c < 32 ? c - 16
                                            : 16),
                    m2 = tail_mask(c < 32   ? 0
                                   : c < 48 ? c - 32
                                            : 16),
                    m3 = tail_mask(c < 48 ? 0 : c - 48);
    __m512 a0 = _mm512_maskz_loadu_ps(m0, out + i), a1 = _mm512_maskz_loadu_ps(m1, out + i + 16),
           a2 = _mm512_maskz_loadu_ps(m2, out + i + 32), a3 = _mm512_maskz_loadu_ps(m3, out + i + 48);
    for (int64_t j = 0; j < rows; ++j) {
      const float* vr = v + j * stride + i;
      const __m512 pj = _mm512_set1_ps(p[j]);
      a0 = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m0, vr), a0);
      a1 = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m1, vr + 16), a1);
      a2 = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m2, vr + 32), a2);
      a3 = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m3, vr + 48), a3);
    }
    _mm512_mask_storeu_ps(out + i, m0, a0);
    _mm512_mask_storeu_ps(out + i + 16, m1, a1);
    _mm512_mask_storeu_ps(out + i + 32, m2, a2);
    _mm512_mask_storeu_ps(out + i + 48, m3, a3);
  }
}

KITE_TARGET_AVX512 void weighted_rows(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n,
                                      float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  weighted_rows_acc(p, v, stride, rows, n, out);
}

KITE_TARGET_AVX512 void to_f32(const void* src, DType from, float* dst, int64_t n) {
  if (from == DType::F32) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<const float*>(src)[i];
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    _mm512_storeu_ps(dst + i, from == DType::BF16 ? bf16x16_to_f32(h) : _mm512_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = from == DType::BF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

}  // namespace

const VecOps& vec_ops_avx512() {
  static const VecOps ops{dot,      sum_squares,   scale_mul,         axpy,  scale, exp_sub_sum, silu_mul, add,
                          dot_rows, weighted_rows, weighted_rows_acc, to_f32};
  return ops;
}

}  // namespace kite::cpu
