#pragma once
// Round-to-nearest (RTN) quantization of a weight W: [out, in] into Kite's
// internal layouts (core/quant_weight.h), the integer grids that GPTQ and AWQ
// share with it, and the error of a quantized weight against its original.
//
// Conventions (the layouts themselves are fixed by core/quant_weight.h):
//   Int8  symmetric only: scale = absmax / 127 per group, code =
//         clamp(round(w / scale), -127, 127).
//   Int4  symmetric: zero = 8, scale = absmax / 7, code = round(w / scale) + 8,
//         so codes use 1..15 and the grid is -7s..7s. We take absmax / 7 over
//         llama.cpp's "max / -8" (Q4_0), which reaches -8 only by giving half
//         of the groups a negative scale (the converters to AutoGPTQ /
//         compressed-tensors checkpoints and the error bound below both want
//         s > 0) or else clamps the opposite side with up to one full step of
//         error. With absmax / 7 the grid is sign-symmetric, nothing is ever
//         clamped and |w - dq| <= s / 2 holds for every element; the price is
//         one unused code (about 0.1 bit). (AutoGPTQ's sym=True grid,
//         s = 2 absmax / 15, is also valid in this layout but not produced.)
//   Int4  asymmetric: the range [min(w_min, 0), max(w_max, 0)] (it always
//         holds 0, as GPTQ's quantizer does, so an all-positive group is not
//         clamped and 0 is exact), scale = range / 15, zero =
//         clamp(round(-lo / scale), 0, 15), stored as an integral float.
//   Nf4   absmax per block of `group` consecutive row-major elements; code =
//         the nearest NF4 level of x = w * (1 / absmax). The boundaries are the
//         midpoints between neighbouring levels (rounded to float) and a value
//         exactly on a midpoint takes the LOWER code: bitsandbytes' decision
//         tree tests `x > midpoint` at every node.
//   Fp8   E4M3, scale = absmax / 448 per output channel (or per tensor);
//         code = f32_to_fp8_e4m3(w / scale) (round to nearest even).
// Rounding is round-half-to-even everywhere (as torch.round). A group whose
// values are all 0 gets scale 1 (its codes dequantize to exactly 0).
#include <cstdint>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite::quant {

struct QuantSpec {
  QuantScheme scheme = QuantScheme::Int4;  // Int8, Int4, Nf4 or Fp8
  int bits = 4;                            // Int schemes: 8 for Int8, 4 for Int4 (ignored for Nf4/Fp8)
  int64_t group = 128;                     // Int4/Int8: group along in (-1 or in: per channel); Nf4: block size
  bool symmetric = true;                   // Int4 only may be asymmetric
  bool per_channel = true;                 // Fp8: scale per output channel, else per tensor

  // The usual specs with their usual defaults (NF4 blocks of 64 as bitsandbytes).
  static QuantSpec int8(int64_t group = -1);
  static QuantSpec int4(int64_t group = 128, bool symmetric = true);
  static QuantSpec nf4(int64_t block = 64);
  static QuantSpec fp8(bool per_channel = true);
};

// Quantizes w: [out, in] (any float dtype, any device) with round to nearest.
// Throws kite::Error("quantize", field, ...) for a spec the layouts cannot
// hold (group not dividing in, odd in for 4-bit, bits not matching the
// scheme, asymmetric Int8, ...) or a weight with non-finite values.
QuantWeight quantize_rtn(const Tensor& w, const QuantSpec& spec);

// The error of q against w: [out, in] (any float dtype).
struct QuantError {
  double max_abs = 0;  // max |w - dq|
  double mean_sq = 0;  // mean (w - dq)^2
  double rel_fro = 0;  // ||w - dq||_F / ||w||_F (0 when both are 0)
};
QuantError quant_error(const Tensor& w, const QuantWeight& q);

// ---- shared by the quantizers ----------------------------------------------

// One group's uniform integer grid: code = clamp(round(w / scale) + zero,
// qmin, qmax), value = (code - zero) * scale.
struct IntGrid {
  float scale = 1.0f;
  float zero = 0.0f;
  int qmin = 0, qmax = 15;

  int code(float w) const;
  float value(int code) const { return (float(code) - zero) * scale; }
  float fake(float w) const { return value(code(w)); }  // quantize-dequantize
};

// The grid of the conventions above for values w[0..n): bits 4 (symmetric or
// not) or 8 (symmetric; codes -127..127, zero 0).
IntGrid int_grid(const float* w, int64_t n, int bits, bool symmetric);

// Round half to even (|x| < 2^22; larger values are returned unchanged,
// which is only ever clamped afterwards).
float round_half_even(float x);

// The NF4 code of x (x normally in [-1, 1]): nearest level, midpoint -> lower.
uint8_t nf4_code(float x);

// f32_to_fp8_e4m3 (same results, bit for bit) by binary search.
uint8_t fp8_e4m3_encode(float f);

// t's elements as floats after checking that t is a float matrix [rows, cols]
// (with flatten, any t of 2+ dims: [..., cols]) of finite values; throws
// kite::Error(source, field, ...) otherwise.
std::vector<float> checked_floats(const Tensor& t, const char* source, const char* field, bool flatten = false);

// The group a spec's `group` field means for a weight with `in` columns
// (-1 -> in); throws when it does not divide in.
int64_t resolve_group(int64_t group, int64_t in, const char* source);

}  // namespace kite::quant
