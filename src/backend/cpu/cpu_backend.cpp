#include "backend/cpu/cpu_backend.h"

#include <cpuid.h>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "core/parallel.h"

namespace kite::cpu {

namespace {

// F16C (CPUID leaf 1, ECX bit 29): queried directly because clang 14's
// __builtin_cpu_supports does not know "f16c".
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

SimdLevel detect_hardware() {
  SimdLevel best = SimdLevel::Scalar;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c()) best = SimdLevel::Avx2;
  if (best == SimdLevel::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = SimdLevel::Avx512;
  return best;
}

SimdLevel detect_capped() {
  SimdLevel best = detected_simd_level();
  const char* cap = std::getenv("KITE_SIMD");
  if (cap && *cap) {
    SimdLevel want;
    if (std::strcmp(cap, "scalar") == 0)
      want = SimdLevel::Scalar;
    else if (std::strcmp(cap, "avx2") == 0)
      want = SimdLevel::Avx2;
    else if (std::strcmp(cap, "avx512") == 0)
      want = SimdLevel::Avx512;
    else
      fail("KITE_SIMD", cap, "expected scalar, avx2 or avx512, got '{}'", cap);
    if (int(want) < int(best)) best = want;
  }
  return best;
}

}  // namespace

SimdLevel detected_simd_level() {
  static const SimdLevel level = detect_hardware();
  return level;
}

SimdLevel simd_level() {
  static const SimdLevel level = detect_capped();
  return level;
}

std::vector<SimdLevel> available_simd_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512})
    if (int(l) <= int(detected_simd_level())) out.push_back(l);
  return out;
}

SimdLevel clamp_simd_level(SimdLevel want) {
  return int(want) <= int(detected_simd_level()) ? want : detected_simd_level();
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

// backend/cpu/rope_write_kv_cache.cpp: (rms_norm per head and) rope on q
// and a copy of k, then write_kv_cache.
void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const ops::RopeOptions& options);
void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const ops::RopeOptions& options);

// backend/cpu/argmax.cpp.
void argmax(const Tensor& x, Tensor& out);

// backend/cpu/sample.cpp.
std::vector<ops::SampledToken> sample_rows(Tensor& logits, const ops::SampleBatch& batch);

// backend/cpu/add_rms_norm.cpp: fills table.add_rms_norm.
void register_add_rms_norm(Kernels& table);

void register_kernels(Kernels& table) {
  // Linear kernels, one line each (backend/linear.h), fastest first by rank.
  register_linear_kernel(DeviceKind::CPU, make_dense_linear_kernel());
  register_linear_kernel(DeviceKind::CPU, make_quant_linear_kernel());
  register_add_rms_norm(table);
  table.embedding = [](const Tensor& t, const Tensor& ids, Tensor& out) { embedding(t, ids, out); };
  table.embedding_shard = [](const Tensor& t, const Tensor& ids, int64_t first, Tensor& out) {
    embedding_shard(t, ids, first, out);
  };
  table.rms_norm = [](const Tensor& x, const Tensor& w, float eps, Tensor& out) {
    rms_norm(x, w, eps, out, simd_level());
  };
  table.linear = [](const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y) { linear(x, w, b, y, simd_level()); };
  table.linear_q = [](const Tensor& x, const QuantWeight& w, const Tensor* b, Tensor& y) {
    linear_q(x, w, b, y, simd_level());
  };
  table.rope = [](Tensor& x, const Tensor& pos, const Tensor& inv_freq, float factor) {
    rope(x, pos, inv_freq, factor);
  };
  table.attention = [](const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale, Tensor& out) {
    attention(q, k, v, q_start, scale, out, simd_level());
  };
  table.paged_attention = [](const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& qs, const Tensor& cl,
                             const Tensor& bt, float scale, const ops::PagedAttentionHints&, int64_t window,
                             Tensor& out) { paged_attention(q, kc, vc, qs, cl, bt, scale, window, out, simd_level()); };
  table.write_kv_cache = [](const Tensor& k, const Tensor& v, const Tensor& slots, Tensor& kc, Tensor& vc) {
    write_kv_cache(k, v, slots, kc, vc);
  };
  table.silu_mul = [](const Tensor& g, const Tensor& u, Tensor& out) { silu_mul(g, u, out, simd_level()); };
  table.silu_mul_fused = [](const Tensor& gu, Tensor& out) { silu_mul_fused(gu, out, simd_level()); };
  table.add = [](const Tensor& a, const Tensor& b, Tensor& out) { add(a, b, out, simd_level()); };
  table.rope_write_kv_cache = rope_write_kv_cache;  // backend/cpu/rope_write_kv_cache.cpp
  table.rope_write_kv_cache_fused = rope_write_kv_cache_fused;
  table.argmax = argmax;            // backend/cpu/argmax.cpp
  table.sample_rows = sample_rows;  // backend/cpu/sample.cpp
}

}  // namespace kite::cpu
