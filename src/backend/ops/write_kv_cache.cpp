#include "backend/ops/write_kv_cache.h"

#include <algorithm>
#include <vector>

#include "backend/ops/check.h"
#include "backend/ops/trusted.h"

namespace kite::ops {

void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  const detail::OpCheck c("write_kv_cache");
  const char* cache_layout = "[num_blocks, block_size, n_kv_heads, head_dim]";
  // The CPU stores F32 rows; the CUDA kernel BF16 ones.
  const DType dt = k.defined() && !k.device().is_cpu() ? DType::BF16 : DType::F32;
  c.tensor("k", k, 3, "[n_tokens, n_kv_heads, head_dim]", {dt});
  c.tensor("v", v, 3, "[n_tokens, n_kv_heads, head_dim]", {dt});
  c.same_device("v", v, "k", k);
  for (int i = 0; i < 3; ++i) c.dim("v", v, i, k.dim(i), "shape of k");
  c.tensor("slot_mapping", slot_mapping, 1, "[n_tokens]", {DType::I32});
  c.same_device("slot_mapping", slot_mapping, "k", k);
  c.dim("slot_mapping", slot_mapping, 0, k.dim(0), "n_tokens of k");
  c.tensor("k_cache", k_cache, 4, cache_layout, {dt});
  c.same_device("k_cache", k_cache, "k", k);
  c.dim("k_cache", k_cache, 2, k.dim(1), "n_kv_heads of k");
  c.dim("k_cache", k_cache, 3, k.dim(2), "head_dim of k");
  c.tensor("v_cache", v_cache, 4, cache_layout, {dt});
  c.same_device("v_cache", v_cache, "k", k);
  for (int i = 0; i < 4; ++i) c.dim("v_cache", v_cache, i, k_cache.dim(i), "shape of k_cache");
  for (const auto& [arg, cache] : {std::pair<const char*, const Tensor*>{"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    c.no_overlap(arg, *cache, "k", k, false);
    c.no_overlap(arg, *cache, "v", v, false);
    c.no_overlap(arg, *cache, "slot_mapping", slot_mapping, false);
  }
  c.no_overlap("v_cache", v_cache, "k_cache", k_cache, false);

  // Trusted device-side slots (ops/trusted.h) skip the host copy below.
  if (!slot_mapping.device().is_cpu() && indices_trusted()) {
    c.kernel(k.device(), &Kernels::write_kv_cache)(k, v, slot_mapping, k_cache, v_cache);
    return;
  }
  // Every slot is checked before any row is written (a small copy when the
  // mapping lives on a device).
  const Tensor host = slot_mapping.device().is_cpu() ? slot_mapping : slot_mapping.to(kCpu);
  const int32_t* slots = host.data_as<const int32_t>();
  const int64_t n_tokens = k.dim(0), n_slots = k_cache.dim(0) * k_cache.dim(1);
  std::vector<int32_t> used;
  used.reserve(size_t(n_tokens));
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (slots[t] == -1) continue;
    if (slots[t] < 0 || slots[t] >= n_slots)
      c.fail_arg("slot_mapping", fmt::format("expected slots in [0, {}) (num_blocks * block_size) or -1, got {} at "
                                             "index {}",
                                             n_slots, slots[t], t));
    used.push_back(slots[t]);
  }
  std::sort(used.begin(), used.end());
  const auto dup = std::adjacent_find(used.begin(), used.end());
  if (dup != used.end())
    c.fail_arg("slot_mapping", fmt::format("expected distinct slots, got slot {} more than once", *dup));
  c.kernel(k.device(), &Kernels::write_kv_cache)(k, v, slot_mapping, k_cache, v_cache);
}

}  // namespace kite::ops
