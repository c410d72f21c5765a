#pragma once
// GPTQ (Frantar et al., arXiv 2210.17323): quantizes W: [out, in] column by
// column, spreading each column's rounding error over the columns not yet
// quantized through the inverse Hessian of the layer's reconstruction loss
// ||x W^T - x Q^T||^2 (H = 2/N sum x^T x over N calibration tokens).
//
// The grids are RTN's (quant/rtn.h): 4-bit -> QuantScheme::Int4 (symmetric,
// zero 8 and scale absmax / 7, or asymmetric), 8-bit -> QuantScheme::Int8
// (symmetric). Group scales/zeros are taken from the weights as updated by
// the error compensation when the first column of each group is reached.
//
// act_order: columns are processed by descending diag(H). Without
// static_groups the result keeps that order: packed column j holds input
// column perm[j] (QuantWeight::perm) and groups run over packed columns (the
// exllama-style static reordering; AutoGPTQ's g_idx is converted to and from
// it by quant/layouts). With static_groups the groups are the input's own
// column groups, their grids are taken from the unmodified weights up front,
// and the result is in input order with no perm (act-order's accuracy, plain
// layout).
#include <cstdint>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::quant {

// Accumulates H = 2/N sum_t x_t^T x_t over calibration batches, in double.
// (The reference keeps a running average; this keeps the sum and divides on
// read, which is the same matrix with less rounding.)
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t in);
  // x: [n, in] (or [..., in]), any float dtype, any device.
  void add(const Tensor& x);
  // [in, in] F32 (Kite's tensors have no F64; hessian_f64 keeps full precision).
  Tensor hessian() const;
  std::vector<double> hessian_f64() const;  // [in, in] row-major
  int64_t samples() const { return samples_; }
  int64_t in() const { return in_; }

 private:
  int64_t in_;
  int64_t samples_ = 0;
  std::vector<double> sum_;  // [in, in] sum of x^T x (upper triangle filled; mirrored on read)
};

struct GptqOptions {
  int bits = 4;                // 4 -> Int4, 8 -> Int8
  int64_t group = 128;         // -1 or in: per channel
  bool symmetric = true;       // 8-bit: symmetric only
  bool act_order = false;      // process columns by descending diag(H)
  double damp = 0.01;          // H += damp * mean(diag(H)) * I (raised x10 up to 3 times if H is not positive definite)
  int64_t block = 128;         // columns per lazy batch update
  bool static_groups = false;  // grids from the original weights, groups over input columns (see above)
};

struct GptqStats {
  double loss = 0;           // proxy loss: sum over all weights of (w - q)^2 / d^2, d = the Cholesky diagonal
  int64_t dead_columns = 0;  // inputs with H_ii == 0 (never active in the calibration data)
  double damp = 0;           // relative dampening actually used
};

// w: [out, in] (any float dtype); hessian: [in, in] F32 (e.g. HessianAccumulator::hessian()).
// Dead columns (H_ii == 0) get H_ii = 1: nothing propagates through them and
// their weights are rounded as RTN would (the reference zeroes them; keeping
// them costs nothing on the calibration data and is safer where they are live).
// Throws kite::Error("gptq", field, ...) for bad options or shapes.
QuantWeight gptq_quantize(const Tensor& w, const Tensor& hessian, const GptqOptions& options,
                          GptqStats* stats = nullptr);
// The same with the accumulator's double-precision Hessian.
QuantWeight gptq_quantize(const Tensor& w, const HessianAccumulator& hessian, const GptqOptions& options,
                          GptqStats* stats = nullptr);

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U), H: [n, n] row-major
// symmetric positive definite (only its upper triangle is read), computed
// in double as the reverse-order Cholesky of H followed by a triangular
// inverse; [n, n] row-major with zeros below the diagonal, or empty when H
// is not (numerically) positive definite.
std::vector<double> inverse_cholesky_upper(std::vector<double> h, int64_t n);

}  // namespace kite::quant
