#include "backend/ops/write_kv_cache.h"

#include "backend/ops/check.h"

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

  c.cache_slots(slot_mapping, k_cache.dim(0) * k_cache.dim(1));  // before anything is written
  c.kernel(k.device(), &Kernels::write_kv_cache)(k, v, slot_mapping, k_cache, v_cache);
}

}  // namespace kite::ops
