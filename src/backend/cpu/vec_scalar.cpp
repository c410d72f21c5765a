// Portable vector primitives (the scalar SIMD level), with the per-level
// table lookup.
#include <cmath>
#include <cstring>

#include "backend/cpu/vec.h"

namespace kite::cpu {

namespace {

float dot(const float* a, const float* b, int64_t n) {
  // Four independent partial sums keep the compiler's dependency chain short.
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

float sum_squares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return float(s);
}

void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * s) * w[i];
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void scale(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

float exp_sub_sum(float* x, float max, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    s += x[i];
  }
  return s;
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void dot_rows(const float* q, const float* k, int64_t stride, int64_t rows, int64_t n, float* out) {
  for (int64_t j = 0; j < rows; ++j) out[j] = dot(q, k + j * stride, n);
}

void weighted_rows_acc(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n, float* out) {
  for (int64_t j = 0; j < rows; ++j) axpy(p[j], v + j * stride, out, n);
}

void weighted_rows(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  weighted_rows_acc(p, v, stride, rows, n, out);
}

void to_f32(const void* src, DType from, float* dst, int64_t n) { convert_to_f32(src, from, dst, size_t(n)); }

}  // namespace

const VecOps& vec_ops_scalar() {
  static const VecOps ops{dot,      sum_squares,   scale_mul,         axpy,  scale, exp_sub_sum, silu_mul, add,
                          dot_rows, weighted_rows, weighted_rows_acc, to_f32};
  return ops;
}

const VecOps& vec_ops(SimdLevel level) {
  switch (clamp_simd_level(level)) {
    case SimdLevel::Avx512: return vec_ops_avx512();
    case SimdLevel::Avx2: return vec_ops_avx2();
    case SimdLevel::Scalar: break;
  }
  return vec_ops_scalar();
}

}  // namespace kite::cpu
