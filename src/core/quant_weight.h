#pragma once
// A linear layer's weight, dense or quantized, in Kite's internal layouts.
// The logical weight is W: [out, in] (y = x @ W^T), row-major. Checkpoint
// layouts of other tools (AutoGPTQ, AutoAWQ, compressed-tensors,
// bitsandbytes) are converted to and from these at load/save time
// (quant/layouts.h); the CPU and CUDA kernels read these layouts directly.
//
// Schemes and their tensors (all on one device):
//
//   Dense        dense:  [out, in] F32 | BF16 | F16
//   Int8         qdata:  [out, in] I8 (symmetric codes -127..127);
//                scales: [out, in / group] F32 (group == in: per channel).
//                        W = q * s[o, g];  perm: optional, as for Int4
//   Int4         qdata:  [out, in / 2] U8, element (o, i) in byte i / 2,
//                        low nibble for even i, high nibble for odd i, as an
//                        unsigned code u in [0, 15];
//                scales: [out, in / group] F32; zeros: [out, in / group] F32
//                        (symmetric: every zero is 8).  W = (u - z[o, g]) * s[o, g]
//                perm:   optional [in] I32 (act-order): packed column j holds
//                        input column perm[j]; groups run over packed columns.
//                        So y[o] = sum_j W'[o, j] * x[perm[j]].
//   Nf4          qdata:  [out, in / 2] U8 as Int4 (code = index into the
//                        NF4 table, kNf4Table); scales: [out * in / group] F32,
//                        the absmax of each block of `group` consecutive
//                        elements of the row-major weight (group divides in).
//                        W = kNf4Table[u] * absmax[block]
//   Fp8          qdata:  [out, in] F8_E4M3; scales: [out] F32 (per channel)
//                        or [1] F32 (per tensor).  W = fp8(q) * s
//
// Activation quantization (how x is treated before the product):
//   ActQuant::None      x used in F32 (weight-only: W8A16, W4A16, ...)
//   ActQuant::Int8Token x quantized per token (row) to int8 with scale
//                       max|x_row| / 127 (dynamic; W8A8 INT8, Int8 weights only)
//   ActQuant::Fp8Token  x rounded per token to E4M3 with scale max|x_row| / 448
//   ActQuant::Fp8Static x rounded to E4M3 with the calibrated input_scale
// `smooth` (optional [in] F32, SmoothQuant): x[:, i] / smooth[i] is used in
// place of x (the weights were multiplied by smooth when quantized).
#include <array>
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace kite {

enum class QuantScheme : uint8_t { Dense, Int8, Int4, Nf4, Fp8 };
enum class ActQuant : uint8_t { None, Int8Token, Fp8Token, Fp8Static };

std::string_view quant_scheme_name(QuantScheme s);  // "dense", "int8", "int4", "nf4", "fp8"

// The 16 NF4 levels of bitsandbytes (normal-float quantiles of N(0, 1)
// scaled to [-1, 1]), ascending.
extern const std::array<float, 16> kNf4Table;

struct QuantWeight {
  QuantScheme scheme = QuantScheme::Dense;
  int64_t out = 0, in = 0;  // logical [out, in]
  int64_t group = 0;        // Int8/Int4: group along `in` (Int8: in = per channel); Nf4: block size; else 0
  Tensor dense;             // Dense
  Tensor qdata, scales, zeros, perm;
  ActQuant act = ActQuant::None;
  float input_scale = 0.0f;  // ActQuant::Fp8Static
  Tensor smooth;             // optional [in] F32

  bool quantized() const { return scheme != QuantScheme::Dense; }
  static QuantWeight from_dense(Tensor w);  // w: [out, in] float
  // Bytes of weight storage (codes, scales, zeros, perm) and bits per weight.
  size_t storage_bytes() const;
  double bits_per_weight() const { return 8.0 * double(storage_bytes()) / double(out * in); }
  // Throws kite::Error(source, field, ...) when tensors disagree with the
  // scheme's layout (shape, dtype, group dividing in, ...).
  void validate(const std::string& source) const;
};

// The reference dequantization: W as F32 [out, in] on the CPU, in logical
// (unpermuted) column order. Tests and the quantizers use it.
Tensor dequantize(const QuantWeight& w);

// Int4/Nf4 packing helpers for [rows, cols] codes (cols even): element i of a
// row goes to byte i / 2, low nibble when i is even.
uint8_t get_nibble(const uint8_t* row, int64_t i);
void set_nibble(uint8_t* row, int64_t i, uint8_t code);

}  // namespace kite
