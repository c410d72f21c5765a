#pragma once
// CPU backend: kernel table registration and feature detection.
#include <string>

#include "backend/kernels.h"

namespace kite::cpu {

enum class SimdLevel { Scalar, Avx2, Avx512 };
// Best SIMD level of this CPU (runtime detection); KITE_SIMD=scalar|avx2|avx512
// in the environment caps it (tests use this to check every path).
SimdLevel simd_level();
const char* simd_name(SimdLevel level);

void register_kernels(Kernels& table);
std::string description();

}  // namespace kite::cpu
