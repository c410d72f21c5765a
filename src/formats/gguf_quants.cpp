// ggml tensor types: block geometry and dequantization to float32.
//
// Block layouts (all little-endian, fp16 scales as IEEE half):
//   Q4_0  32 elems: f16 d, u8 qs[16]          x = (q - 8) * d; low nibbles are elements 0..15, high 16..31
//   Q4_1  32 elems: f16 d, f16 m, u8 qs[16]   x = q * d + m
//   Q5_0  32 elems: f16 d, u32 qh, u8 qs[16]  q = nibble | (bit j of qh) << 4; x = (q - 16) * d
//   Q5_1  32 elems: f16 d, f16 m, u32 qh, u8 qs[16]   x = q * d + m
//   Q8_0  32 elems: f16 d, i8 qs[32]          x = q * d
//   Q8_1  32 elems: f16 d, f16 s, i8 qs[32]   x = q * d (s = d * sum(q), for dot products)
//   Q2_K 256 elems: u8 scales[16], u8 qs[64], f16 d, f16 dmin; 16 sub-blocks of 16 with 4-bit scale/min
//   Q4_K 256 elems: f16 d, f16 dmin, u8 scales[12], u8 qs[128]; 8 sub-blocks of 32 with 6-bit scale/min
//   Q5_K 256 elems: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
//   Q6_K 256 elems: u8 ql[128], u8 qh[64], i8 scales[16], f16 d; 16 sub-blocks of 16
//   Q8_K 256 elems: f32 d, i8 qs[256], i16 bsums[16]
#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "formats/gguf.h"

namespace kite {

namespace {

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block:
// bytes 0..3 hold the low 6 bits of scales 0..3, bytes 4..7 those of mins
// 0..3; bytes 8..11 hold the low 4 bits of scales/mins 4..7, whose top 2
// bits sit in the top bits of bytes 0..7.
inline void k_scale_min(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void dq_q4_0(const uint8_t* b, float* y) {
  float d = half_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(int(qs[j] & 0x0f) - 8) * d;
    y[j + 16] = float(int(qs[j] >> 4) - 8) * d;
  }
}

void dq_q4_1(const uint8_t* b, float* y) {
  float d = half_at(b), m = half_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0x0f) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

void dq_q5_0(const uint8_t* b, float* y) {
  float d = half_at(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
    int hi = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
    y[j] = float(lo - 16) * d;
    y[j + 16] = float(hi - 16) * d;
  }
}

void dq_q5_1(const uint8_t* b, float* y) {
  float d = half_at(b), m = half_at(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
    int hi = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
    y[j] = float(lo) * d + m;
    y[j + 16] = float(hi) * d + m;
  }
}

void dq_q8_0(const uint8_t* b, float* y) {
  float d = half_at(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = float(qs[j]) * d;
}

void dq_q8_1(const uint8_t* b, float* y) {
  float d = half_at(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 32; ++j) y[j] = float(qs[j]) * d;
}

void dq_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  float d = half_at(b + 80), dmin = half_at(b + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        uint8_t sc = scales[is++];
        float dl = d * float(sc & 0x0f), ml = dmin * float(sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

void dq_q4_k(const uint8_t* b, float* y) {
  float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0; j < 8; j += 2) {  // 4 chunks of 64: low nibbles then high nibbles of 32 bytes
    int sc, m;
    k_scale_min(j, scales, sc, m);
    float d1 = d * float(sc), m1 = dmin * float(m);
    k_scale_min(j + 1, scales, sc, m);
    float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) y[l] = d1 * float(q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) y[l + 32] = d2 * float(q[l] >> 4) - m2;
    q += 32;
    y += 64;
  }
}

void dq_q5_k(const uint8_t* b, float* y) {
  float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  for (int j = 0; j < 8; j += 2) {
    int sc, m;
    k_scale_min(j, scales, sc, m);
    float d1 = d * float(sc), m1 = dmin * float(m);
    k_scale_min(j + 1, scales, sc, m);
    float d2 = d * float(sc), m2 = dmin * float(m);
    uint8_t u1 = uint8_t(1u << j), u2 = uint8_t(2u << j);
    for (int l = 0; l < 32; ++l) y[l] = d1 * float((ql[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) y[l + 32] = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    y += 64;
  }
}

void dq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = half_at(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      int q1 = int((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = int((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void dq_q8_k(const uint8_t* b, float* y) {
  float d;
  std::memcpy(&d, b, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 256; ++j) y[j] = d * float(qs[j]);
}

}  // namespace

std::string ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::IQ2_XXS: return "IQ2_XXS";
    case GgmlType::IQ2_XS: return "IQ2_XS";
    case GgmlType::IQ3_XXS: return "IQ3_XXS";
    case GgmlType::IQ1_S: return "IQ1_S";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    case GgmlType::IQ3_S: return "IQ3_S";
    case GgmlType::IQ2_S: return "IQ2_S";
    case GgmlType::IQ4_XS: return "IQ4_XS";
    case GgmlType::I8: return "I8";
    case GgmlType::I16: return "I16";
    case GgmlType::I32: return "I32";
    case GgmlType::I64: return "I64";
    case GgmlType::F64: return "F64";
    case GgmlType::IQ1_M: return "IQ1_M";
    case GgmlType::BF16: return "BF16";
  }
  return fmt::format("type {}", uint32_t(t));
}

std::optional<GgmlBlockLayout> ggml_block_layout(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return GgmlBlockLayout{1, 4};
    case GgmlType::F16: return GgmlBlockLayout{1, 2};
    case GgmlType::BF16: return GgmlBlockLayout{1, 2};
    case GgmlType::F64: return GgmlBlockLayout{1, 8};
    case GgmlType::I8: return GgmlBlockLayout{1, 1};
    case GgmlType::I16: return GgmlBlockLayout{1, 2};
    case GgmlType::I32: return GgmlBlockLayout{1, 4};
    case GgmlType::I64: return GgmlBlockLayout{1, 8};
    case GgmlType::Q4_0: return GgmlBlockLayout{32, 18};
    case GgmlType::Q4_1: return GgmlBlockLayout{32, 20};
    case GgmlType::Q5_0: return GgmlBlockLayout{32, 22};
    case GgmlType::Q5_1: return GgmlBlockLayout{32, 24};
    case GgmlType::Q8_0: return GgmlBlockLayout{32, 34};
    case GgmlType::Q8_1: return GgmlBlockLayout{32, 36};
    case GgmlType::Q2_K: return GgmlBlockLayout{256, 84};
    case GgmlType::Q3_K: return GgmlBlockLayout{256, 110};
    case GgmlType::Q4_K: return GgmlBlockLayout{256, 144};
    case GgmlType::Q5_K: return GgmlBlockLayout{256, 176};
    case GgmlType::Q6_K: return GgmlBlockLayout{256, 210};
    case GgmlType::Q8_K: return GgmlBlockLayout{256, 292};
    case GgmlType::IQ2_XXS: return GgmlBlockLayout{256, 66};
    case GgmlType::IQ2_XS: return GgmlBlockLayout{256, 74};
    case GgmlType::IQ3_XXS: return GgmlBlockLayout{256, 98};
    case GgmlType::IQ1_S: return GgmlBlockLayout{256, 50};
    case GgmlType::IQ4_NL: return GgmlBlockLayout{32, 18};
    case GgmlType::IQ3_S: return GgmlBlockLayout{256, 110};
    case GgmlType::IQ2_S: return GgmlBlockLayout{256, 82};
    case GgmlType::IQ4_XS: return GgmlBlockLayout{256, 136};
    case GgmlType::IQ1_M: return GgmlBlockLayout{256, 56};
  }
  return std::nullopt;
}

bool ggml_can_dequantize(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q8_1:
    case GgmlType::Q2_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::Q8_K: return true;
    default: return false;
  }
}

void dequantize_ggml(GgmlType type, const void* src, float* dst, int64_t n) {
  KITE_CHECK(ggml_can_dequantize(type), "dequantize_ggml: unsupported type {}", ggml_type_name(type));
  GgmlBlockLayout layout = *ggml_block_layout(type);
  KITE_CHECK(n >= 0 && n % layout.block_elems == 0, "dequantize_ggml: {} elements is not whole {} blocks", n,
             ggml_type_name(type));
  const uint8_t* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, s, size_t(n) * 4); return;
    case GgmlType::F16:  // element loads by memcpy: GGUF data need not be 2-byte aligned
      for (int64_t i = 0; i < n; ++i) dst[i] = half_at(s + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    default: break;
  }
  void (*fn)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::Q4_0: fn = dq_q4_0; break;
    case GgmlType::Q4_1: fn = dq_q4_1; break;
    case GgmlType::Q5_0: fn = dq_q5_0; break;
    case GgmlType::Q5_1: fn = dq_q5_1; break;
    case GgmlType::Q8_0: fn = dq_q8_0; break;
    case GgmlType::Q8_1: fn = dq_q8_1; break;
    case GgmlType::Q2_K: fn = dq_q2_k; break;
    case GgmlType::Q4_K: fn = dq_q4_k; break;
    case GgmlType::Q5_K: fn = dq_q5_k; break;
    case GgmlType::Q6_K: fn = dq_q6_k; break;
    case GgmlType::Q8_K: fn = dq_q8_k; break;
    default: break;
  }
  int64_t blocks = n / layout.block_elems;
  for (int64_t b = 0; b < blocks; ++b) fn(s + size_t(b) * layout.block_bytes, dst + b * layout.block_elems);
}

std::optional<QuantWeight> gguf_quant_weight(const GgufFile& f, const std::string& name) {
  const GgufTensorInfo* info = f.find_tensor(name);
  if (!info) fail(f.path(), name, "not in file");
  const GgmlType type = info->type;
  if (type != GgmlType::Q8_0 && type != GgmlType::Q4_0) return std::nullopt;
  if (info->shape.size() != 2)
    fail(f.path(), name, "a {} linear weight must be 2-D [out, in], got {}", ggml_type_name(type),
         shape_to_string(info->shape));
  constexpr int64_t kBlock = 32;  // elements of a Q8_0 / Q4_0 block: one Kite group
  const int64_t out = info->shape[0], in = info->shape[1];
  if (out < 1 || in < 1 || in % kBlock != 0)
    fail(f.path(), name, "{} rows of {} elements are not whole {}-element blocks; re-export the tensor as F16 or F32",
         ggml_type_name(type), in, kBlock);
  const GgmlBlockLayout layout = *ggml_block_layout(type);
  const int64_t groups = in / kBlock;
  const uint8_t* src = f.tensor_data(*info);
  QuantWeight w;
  w.out = out;
  w.in = in;
  w.group = kBlock;
  w.scales = Tensor::empty({out, groups}, DType::F32);  // [out, in / 32]
  float* sc = w.scales.data_as<float>();
  if (type == GgmlType::Q8_0) {
    w.scheme = QuantScheme::Int8;
    w.qdata = Tensor::empty({out, in}, DType::I8);  // [out, in]
    uint8_t* q = w.qdata.data_as<uint8_t>();
    parallel_for(out, std::max<int64_t>(1, 16384 / in), [&](int64_t r0, int64_t r1) {
      for (int64_t b = r0 * groups; b < r1 * groups; ++b) {
        const uint8_t* blk = src + size_t(b) * layout.block_bytes;  // f16 d, i8 qs[32]
        sc[b] = half_at(blk);
        std::memcpy(q + b * kBlock, blk + 2, size_t(kBlock));
      }
    });
  } else {
    w.scheme = QuantScheme::Int4;
    w.qdata = Tensor::empty({out, in / 2}, DType::U8);   // [out, in / 2]
    w.zeros = Tensor::empty({out, groups}, DType::F32);  // [out, in / 32]
    std::fill_n(w.zeros.data_as<float>(), out * groups, 8.0f);
    uint8_t* q = w.qdata.data_as<uint8_t>();
    parallel_for(out, std::max<int64_t>(1, 16384 / in), [&](int64_t r0, int64_t r1) {
      for (int64_t b = r0 * groups; b < r1 * groups; ++b) {
        const uint8_t* blk = src + size_t(b) * layout.block_bytes;  // f16 d, u8 qs[16]
        const uint8_t* qs = blk + 2;
        uint8_t* dst = q + b * (kBlock / 2);
        sc[b] = half_at(blk);
        // Kite byte k holds elements 2k (low) and 2k + 1 (high); ggml keeps
        // element j < 16 in the low nibble of qs[j], element j + 16 in its high.
        for (int k = 0; k < 8; ++k) dst[k] = uint8_t((qs[2 * k] & 0x0f) | (qs[2 * k + 1] << 4));
        for (int k = 8; k < 16; ++k) dst[k] = uint8_t((qs[2 * k - 16] >> 4) | (qs[2 * k - 15] & 0xf0));
      }
    });
  }
  w.validate(f.path() + ": " + name);
  return w;
}

}  // namespace kite
