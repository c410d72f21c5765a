#pragma once
// Element types of tensors and conversions between them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace kite {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, I8, U8, I32, I64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

// ---- scalar conversions (exact where the format allows) ------------------
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float fp8_e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8_e4m3(float f);  // saturates to +-448, round to nearest even

// Converts n elements of `src` (type `from`) to float.
void convert_to_f32(const void* src, DType from, float* dst, size_t n);
// Converts n floats to `to` (float types only).
void convert_from_f32(const float* src, void* dst, DType to, size_t n);

}  // namespace kite
