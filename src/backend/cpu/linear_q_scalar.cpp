// linear_q without SIMD: each weight row is dequantized to F32 once (the
// values dequantize() gives, in x' order) and dotted with every x row;
// Int8Token multiplies int8 codes in int32 per group.
#include <array>
#include <vector>

#include "backend/cpu/linear_q_kernels.h"
#include "backend/cpu/vec.h"

namespace kite::cpu {

namespace {

const std::array<float, 256>& e4m3_values() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> v{};
    for (int c = 0; c < 256; ++c) v[size_t(c)] = fp8_e4m3_to_f32(uint8_t(c));
    return v;
  }();
  return t;
}

// Weight row j as F32 [in], in x' order.
void decode_row(const LinearQArgs& a, int64_t j, float* o) {
  const int64_t in = a.in, g_len = a.group, groups = a.groups;
  switch (a.scheme) {
    case QuantScheme::Int8: {
      const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
      const float* s = a.scales + j * groups;
      for (int64_t k = 0; k < in; ++k) o[k] = float(q[k]) * s[k / g_len];
      return;
    }
    case QuantScheme::Int4:
    case QuantScheme::Nf4: {
      const uint8_t* row = a.q + j * (in / 2);
      const int64_t full = g_len / kNibbleBlock * kNibbleBlock;
      for (int64_t g = 0; g < groups; ++g) {
        float lut[16];  // the group's 16 weight values
        for (int u = 0; u < 16; ++u)
          lut[u] = a.scheme == QuantScheme::Int4 ? (float(u) - a.zeros[j * groups + g]) * a.scales[j * groups + g]
                                                 : kNf4Table[size_t(u)] * a.scales[j * groups + g];
        const int64_t g0 = g * g_len;
        for (int64_t b = g0; b < g0 + full; b += kNibbleBlock)
          for (int64_t t = 0; t < kNibbleBlock / 2; ++t) {
            const uint8_t byte = row[b / 2 + t];
            o[b + t] = lut[byte & 0xF];
            o[b + kNibbleBlock / 2 + t] = lut[byte >> 4];
          }
        for (int64_t k = g0 + full; k < g0 + g_len; ++k) o[k] = lut[get_nibble(row, k)];
      }
      return;
    }
    case QuantScheme::Fp8: {
      const std::array<float, 256>& v = e4m3_values();
      const uint8_t* q = a.q + j * in;
      const float s = a.scales[a.per_channel ? j : 0];
      for (int64_t k = 0; k < in; ++k) o[k] = v[q[k]] * s;
      return;
    }
    case QuantScheme::Dense: return;
  }
}

void cols_int8_token(const LinearQArgs& a, int64_t j0, int64_t j1) {
  const int64_t in = a.in, g_len = a.group, groups = a.groups;
  std::vector<int32_t> dots(static_cast<size_t>(groups));
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* q = reinterpret_cast<const int8_t*>(a.q) + j * in;
    for (int64_t i = 0; i < a.n; ++i) {
      const int8_t* x = a.xq + i * in;
      for (int64_t g = 0; g < groups; ++g) {
        int32_t d = 0;
        for (int64_t k = g * g_len; k < (g + 1) * g_len; ++k) d += int32_t(q[k]) * int32_t(x[k]);
        dots[size_t(g)] = d;
      }
      a.y[i * a.out + j] = int8_token_finish(a, i, j, dots.data());
    }
  }
}

}  // namespace

void linear_q_cols_scalar(const LinearQArgs& a, int64_t j0, int64_t j1) {
  if (a.xq) {
    cols_int8_token(a, j0, j1);
    return;
  }
  const VecOps& v = vec_ops_scalar();
  std::vector<float> w(static_cast<size_t>(a.in));  // [in] the current weight row
  for (int64_t j = j0; j < j1; ++j) {
    decode_row(a, j, w.data());
    for (int64_t i = 0; i < a.n; ++i) a.y[i * a.out + j] = finish_dot(a, i, j, v.dot(a.x + i * a.in, w.data(), a.in));
  }
}

}  // namespace kite::cpu
