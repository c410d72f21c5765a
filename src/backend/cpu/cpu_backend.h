#pragma once
// CPU backend: kernel table registration and feature detection.
#include <memory>
#include <string>
#include <vector>

#include "backend/kernels.h"
#include "backend/linear.h"

namespace kite::cpu {

enum class SimdLevel { Scalar, Avx2, Avx512 };
// Best SIMD level of this CPU (runtime detection); KITE_SIMD=scalar|avx2|avx512
// in the environment caps it (tests use this to check every path).
SimdLevel simd_level();
// What the CPU supports, ignoring KITE_SIMD.
SimdLevel detected_simd_level();
// Every level this CPU can run, lowest first (tests loop over it).
std::vector<SimdLevel> available_simd_levels();
// The level a kernel asked for `want` actually runs: `want` capped to the CPU.
SimdLevel clamp_simd_level(SimdLevel want);
const char* simd_name(SimdLevel level);

void register_kernels(Kernels& table);
// Linear kernels (backend/linear.h), one file each.
std::unique_ptr<LinearKernel> make_dense_linear_kernel();  // linear_dense_kernel.cpp
std::unique_ptr<LinearKernel> make_quant_linear_kernel();  // linear_q_kernel.cpp
std::string description();

}  // namespace kite::cpu
