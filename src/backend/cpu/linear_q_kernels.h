#pragma once
// Per-ISA kernels behind cpu::linear_q (linear_q.cpp prepares the
// activations, splits the output columns across threads and picks the level).
//
// Prepared activations ("x'"): per row, x / smooth, then rounded as w.act
// says (Fp8*: the E4M3 values of x / scale; Int8Token: int8 codes), then
// gathered into the weight's packed column order (perm), and for the 4-bit
// schemes reordered inside each group so that every full block of 32 columns
// lists its 16 even columns, then its 16 odd ones: the low and the high
// nibbles of the block's 16 bytes, which the kernels widen without shuffles.
// A group's last group % 32 columns keep their order.
#include <cstdint>
#include <cstring>

#include "core/quant_weight.h"

namespace kite::cpu {

constexpr int64_t kNibbleBlock = 32;  // columns per reordered 4-bit block (16 bytes)

struct LinearQArgs {
  QuantScheme scheme;
  int64_t n, in, out, group;  // group: Int8/Int4 scale group, Nf4 block; Fp8: in
  int64_t groups;             // in / group
  const float* x;             // [n, in] prepared activations (null for Int8Token)
  const int8_t* xq;           // [n, in] Int8Token codes, else null
  const float* xscale;        // [n] factor of each row's dot products (activation scale), or null
  const float* xsum;          // [n, in / group] Int4 at AVX2: sum of x' over each group, else null
  const uint8_t* q;           // qdata bytes
  const float* scales;        // Int8/Int4 [out, in / group]; Nf4 [out * in / group]; Fp8 [out] or [1]
  const float* zeros;         // Int4 [out, in / group], else null
  bool per_channel;           // Fp8: one scale per output row (else one for the tensor)
  const float* bias;          // [out] or null
  float* y;                   // [n, out]
};

// Each computes y[:, j0:j1] for all n rows.
void linear_q_cols_scalar(const LinearQArgs& a, int64_t j0, int64_t j1);
void linear_q_cols_avx2(const LinearQArgs& a, int64_t j0, int64_t j1);
void linear_q_cols_avx512(const LinearQArgs& a, int64_t j0, int64_t j1);

// Int8Token: y[i, j] from the int32 dot products of each group,
// sum_g float(dots[g]) * scale[j, g] in group order, times x's row scale, plus
// bias. One compiled copy serves every SIMD level, so all levels agree bitwise.
float int8_token_finish(const LinearQArgs& a, int64_t i, int64_t j, const int32_t* dots);

// y[i, j] = dot * xscale[i] + bias[j] (every scheme but Int8Token).
inline float finish_dot(const LinearQArgs& a, int64_t i, int64_t j, float dot) {
  return (a.xscale ? dot * a.xscale[i] : dot) + (a.bias ? a.bias[j] : 0.0f);
}

// Weight rows decoded per tile and tile columns per chunk for prefill: the
// F32 tile (64 KiB) stays in L2 and the 4 x rows of a micro-kernel (16 KiB)
// in L1 while the kernel walks the tile's rows.
constexpr int64_t kTileRows = 16;
constexpr int64_t kChunkCols = 1024;
// Columns of one chunk: whole 32-blocks when groups are made of them, else
// whole groups (so a chunk never splits a reordered block).
inline int64_t linear_q_chunk(const LinearQArgs& a) {
  if (a.scheme == QuantScheme::Fp8 || a.scheme == QuantScheme::Int8) return kChunkCols;
  const int64_t unit = a.group % kNibbleBlock == 0 ? kNibbleBlock : a.group;
  return unit >= kChunkCols ? unit : kChunkCols / unit * unit;
}
// Rows of x handled by the register kernels without a decoded tile (each
// weight is decoded once in registers and used for every row).
constexpr int64_t kDirectRows = 4;

// x rounded to the nearest E4M3 value (ties to even), saturating to +-448
// like f32_to_fp8_e4m3; NaN stays NaN.
inline float fp8_e4m3_round(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t sign = u & 0x80000000u;
  uint32_t a = u & 0x7fffffffu;
  float af;
  std::memcpy(&af, &a, 4);
  if (af != af) return v;
  float r;
  if (af >= 464.0f) {
    r = 448.0f;
  } else if (af < 0.015625f) {       // below 2^-6: the subnormal grid, multiples of 2^-9
    r = (af + 16384.0f) - 16384.0f;  // 2^14 has ulp 2^-9: the sum rounds to the grid
  } else {                           // keep 3 mantissa bits, round to nearest even
    a = (a + 0x7ffffu + ((a >> 20) & 1u)) & 0xfff00000u;
    std::memcpy(&r, &a, 4);  // [448, 464) rounds to 448
  }
  uint32_t ru;
  std::memcpy(&ru, &r, 4);
  ru |= sign;
  std::memcpy(&r, &ru, 4);
  return r;
}

}  // namespace kite::cpu
