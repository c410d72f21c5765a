#include "backend/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>

#include "core/parallel.h"
#include <fmt/format.h>

namespace kite::cpu {

namespace {
SimdLevel detect() {
  SimdLevel best = SimdLevel::Scalar;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = SimdLevel::Avx2;
  if (best == SimdLevel::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    best = SimdLevel::Avx512;
  if (const char* cap = std::getenv("KITE_SIMD")) {
    SimdLevel want = std::strcmp(cap, "scalar") == 0 ? SimdLevel::Scalar
                     : std::strcmp(cap, "avx2") == 0 ? SimdLevel::Avx2
                                                     : SimdLevel::Avx512;
    if (int(want) < int(best)) best = want;
  }
  return best;
}
}  // namespace

SimdLevel simd_level() {
  static const SimdLevel level = detect();
  return level;
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
  }
  return "?";
}

std::string description() { return fmt::format("cpu ({}, {} threads)", simd_name(simd_level()), num_threads()); }

void register_kernels(Kernels& table) { (void)table; }

}  // namespace kite::cpu
