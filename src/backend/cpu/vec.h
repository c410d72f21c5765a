#pragma once
// Per-ISA vector primitives shared by the CPU kernels. Each SIMD level has
// its own translation unit (vec_scalar.cpp, vec_avx2.cpp, vec_avx512.cpp)
// compiled with per-function target attributes, so no -march flag is needed
// and a CPU only ever runs the code for a level it supports.
#include <cstdint>

#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"

#define KITE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KITE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace kite::cpu {

struct VecOps {
  // sum_i a[i] * b[i], accumulated in F32 (or wider).
  float (*dot)(const float* a, const float* b, int64_t n);
  // sum_i x[i]^2, accumulated in F32 (or wider).
  float (*sum_squares)(const float* x, int64_t n);
  // out[i] = (x[i] * s) * w[i]  (out may alias x).
  void (*scale_mul)(const float* x, float s, const float* w, float* out, int64_t n);
  // y[i] += a * x[i].
  void (*axpy)(float a, const float* x, float* y, int64_t n);
  // y[i] *= a.
  void (*scale)(float* y, float a, int64_t n);
  // x[i] = exp(x[i] - max); returns the sum of the new x (F32).
  float (*exp_sub_sum)(float* x, float max, int64_t n);
  // out[i] = silu(g[i]) * u[i].
  void (*silu_mul)(const float* g, const float* u, float* out, int64_t n);
  // out[i] = a[i] + b[i].
  void (*add)(const float* a, const float* b, float* out, int64_t n);
  // out[j] = dot(q, k + j * stride) over n elements, for j < rows (attention
  // scores). Each out[j] depends only on q, row j and n, never on `rows` or on
  // where row j sits in the call, so scoring keys span by span (the blocks of
  // a paged cache) gives bitwise the same values as one call over all of them.
  void (*dot_rows)(const float* q, const float* k, int64_t stride, int64_t rows, int64_t n, float* out);
  // out[i] = sum_j p[j] * v[j * stride + i] for i < n, j < rows (out is
  // overwritten); the same as zeroing out and calling weighted_rows_acc.
  void (*weighted_rows)(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n, float* out);
  // out[i] += sum_j p[j] * v[j * stride + i] for i < n, j < rows: one running
  // sum per element that starts at out[i] and takes the rows in order, so
  // accumulating the rows in several calls (one per cache block) gives bitwise
  // the same result as one call over all of them.
  void (*weighted_rows_acc)(const float* p, const float* v, int64_t stride, int64_t rows, int64_t n, float* out);
  // dst[i] = float(src[i]) for F32, BF16 or F16 source.
  void (*to_f32)(const void* src, DType from, float* dst, int64_t n);
};

const VecOps& vec_ops(SimdLevel level);  // level is capped to the CPU
const VecOps& vec_ops_scalar();
const VecOps& vec_ops_avx2();
const VecOps& vec_ops_avx512();

}  // namespace kite::cpu
