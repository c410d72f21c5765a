#pragma once
// Per-ISA kernels behind cpu::linear (linear.cpp does the threading).
#include <cstdint>

#include "core/dtype.h"

namespace kite::cpu {

// y[i, j] = dot(x[i, :], w[j, :]) + bias[j] for every row i < n.
struct LinearArgs {
  const float* x;     // [n, k]
  const void* w;      // [m, k] F32 | BF16 | F16
  const float* bias;  // [m] or null
  float* y;           // [n, m]
  int64_t n, k, m;
  DType wt;
};

// Each computes the output columns [j0, j1) for all n rows.
void linear_cols_scalar(const LinearArgs& a, int64_t j0, int64_t j1);
void linear_cols_avx2(const LinearArgs& a, int64_t j0, int64_t j1);
void linear_cols_avx512(const LinearArgs& a, int64_t j0, int64_t j1);

// Rows of w per L2-resident tile for a given k and weight element size.
inline int64_t linear_tile_rows(int64_t k, size_t wbytes, int64_t multiple) {
  const int64_t budget = 192 * 1024;  // bytes of weights kept hot in L2 while x rows stream past
  int64_t rows = budget / (k * int64_t(wbytes) > 0 ? k * int64_t(wbytes) : 1);
  rows = rows / multiple * multiple;
  return rows < multiple ? multiple : rows;
}

}  // namespace kite::cpu
