// Vector primitives for AVX2 + FMA + F16C. Every function carries the target
// attribute; nothing here runs unless the CPU reports those features.
#include <immintrin.h>

#include <cmath>

#include "backend/cpu/simd_math.h"
#include "backend/cpu/vec.h"

namespace kite::cpu {

namespace {

KITE_TARGET_AVX2 float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

KITE_TARGET_AVX2 float sum_squares(const float* x, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    s0 = _mm256_fmadd_ps(a, a, s0);
    s1 = _mm256_fmadd_ps(b, b, s1);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(x + i);
    s0 = _mm256_fmadd_ps(a, a, s0);
  }
  float s = hsum_avx2(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

KITE_TARGET_AVX2 void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = (x[i] * s) * w[i];
}

KITE_TARGET_AVX2 void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

KITE_TARGET_AVX2 void scale(float* y, float a, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= a;
}

KITE_TARGET_AVX2 float exp_sub_sum(float* x, float max, int64_t n) {
  const __m256 vmax = _mm256_set1_ps(max);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float s = hsum_avx2(sum);
  if (i < n) {
    // The tail goes through the same polynomial so every element sees one exp.
    alignas(32) float buf[8] = {};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_load_ps(buf), vmax));
    _mm256_store_ps(buf, e);
    for (int64_t j = i; j < n; ++j) {
      x[j] = buf[j - i];
      s += buf[j - i];
    }
  }
  return s;
}

KITE_TARGET_AVX2 void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i < n; i += 8) {
    alignas(32) float gb[8] = {}, ub[8] = {};
    const int64_t c = n - i < 8 ? n - i : 8;
    __m256 vg, vu;
    if (c == 8) {
      vg = _mm256_loadu_ps(g + i);
      vu = _mm256_loadu_ps(u + i);
    } else {
      for (int64_t j = 0; j < c; ++j) gb[j] = g[i + j], ub[j] = u[i + j];
      vg = _mm256_load_ps(gb);
      vu = _mm256_load_ps(ub);
    }
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), vg));
    __m256 r = _mm256_mul_ps(_mm256_div_ps(vg, _mm256_add_ps(one, e)), vu);
    if (c == 8) {
      _mm256_storeu_ps(out + i, r);
    } else {
      _mm256_store_ps(gb, r);
      for (int64_t j = 0; j < c; ++j) out[i + j] = gb[j];
    }
  }
}

KITE_TARGET_AVX2 void add(const float* a, const float* b, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

// One row of dot_rows with exactly the arithmetic each row of its four-row
// blocks gets (one accumulator, hsum, then the tail in order with explicit
// fma), so a score does not depend on how the rows were grouped.
KITE_TARGET_AVX2 inline float dot_row(const float* q, const float* k, int64_t nv, int64_t n) {
  __m256 a = _mm256_setzero_ps();
  for (int64_t i = 0; i < nv; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
  float s = hsum_avx2(a);
  for (int64_t i = nv; i < n; ++i) s = std::fma(q[i], k[i], s);
  return s;
}

KITE_TARGET_AVX2 void dot_rows(const float* q, const float* k, int64_t stride, int64_t rows, int64_t n, float* out) {
  int64_t j = 0;
  const int64_t nv = n / 8 * 8;
  for (; j + 4 <= rows; j += 4) {
    const float* k0 = k + j * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t i = 0; i < nv; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + stride + i), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * stride + i), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * stride + i), a3);
    }
    float s[4] = {hsum_avx2(a0), hsum_avx2(a1), hsum_avx2(a2), hsum_avx2(a3)};
    for (int64_t i = nv; i < n; ++i)
      for (int r = 0; r < 4; ++r) s[r] = std::fma(q[i], k0[r * stride + i], s[r]);
    for (int r = 0; r < 4; ++r) out[j + r] = s[r];
  }
  for (; j < rows; ++j) out[j] = dot_row(q, k + j * stride, nv, n);
}

KITE_TARGET_AVX2 void weighted_rows_acc(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n,
                                        float* out) {
  int64_t i = 0;
  // Columns in chunks of 32 kept in four registers across all rows.
  for (; i + 32 <= n; i += 32) {
    __m256 a0 = _mm256_loadu_ps(out + i), a1 = _mm256_loadu_ps(out + i + 8), a2 = _mm256_loadu_ps(out + i + 16),
           a3 = _mm256_loadu_ps(out + i + 24);
    for (int64_t j = 0; j < rows; ++j) {
      const float* vr = v + j * stride + i;
      const __m256 pj = _mm256_set1_ps(p[j]);
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 24), a3);
    }
    _mm256_storeu_ps(out + i, a0);
    _mm256_storeu_ps(out + i + 8, a1);
    _mm256_storeu_ps(out + i + 16, a2);
    _mm256_storeu_ps(out + i + 24, a3);
  }
  if (i < n)
    for (int64_t j = 0; j < rows; ++j) axpy(p[j], v + j * stride + i, out + i, n - i);
}

KITE_TARGET_AVX2 void weighted_rows(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n,
                                    float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  weighted_rows_acc(p, v, stride, rows, n, out);
}

KITE_TARGET_AVX2 void to_f32(const void* src, DType from, float* dst, int64_t n) {
  if (from == DType::F32) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<const float*>(src)[i];
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm256_storeu_ps(dst + i, from == DType::BF16 ? bf16x8_to_f32(h) : _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = from == DType::BF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

}  // namespace

const VecOps& vec_ops_avx2() {
  static const VecOps ops{dot,      sum_squares,   scale_mul,         axpy,  scale, exp_sub_sum, silu_mul, add,
                          dot_rows, weighted_rows, weighted_rows_acc, to_f32};
  return ops;
}

}  // namespace kite::cpu
