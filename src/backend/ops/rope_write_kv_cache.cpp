#include "backend/ops/rope_write_kv_cache.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "backend/ops/check.h"

namespace kite::ops {

namespace {

constexpr const char* kCacheLayout = "[num_blocks, block_size, n_kv_heads, head_dim]";

// What both variants take besides q/k/v: positions, inv_freq, the factor,
// slot_mapping and the two caches (head_dim checked; n_kv_heads against k
// when given), all on `ref`'s device.
void check_rotary_and_caches(const detail::OpCheck& c, const char* ref_name, const Tensor& ref, int64_t n_tokens,
                             int64_t head_dim, DType dt, const Tensor& positions, const Tensor& inv_freq,
                             float attention_factor, const Tensor& slot_mapping, const Tensor& k_cache,
                             const Tensor& v_cache, const Tensor* k) {
  const std::string of = fmt::format("n_tokens of {}", ref_name), hd_of = fmt::format("head_dim of {}", ref_name);
  c.tensor("positions", positions, 1, "[n_tokens]", {DType::I32});
  c.same_device("positions", positions, ref_name, ref);
  c.dim("positions", positions, 0, n_tokens, of.c_str());
  c.inv_freq(inv_freq, n_tokens, of, head_dim, ref_name, ref);
  if (!std::isfinite(attention_factor))
    c.fail_arg("attention_factor", fmt::format("expected a finite factor, got {}", attention_factor));
  c.tensor("slot_mapping", slot_mapping, 1, "[n_tokens]", {DType::I32});
  c.same_device("slot_mapping", slot_mapping, ref_name, ref);
  c.dim("slot_mapping", slot_mapping, 0, n_tokens, of.c_str());
  c.tensor("k_cache", k_cache, 4, kCacheLayout, {dt});
  c.same_device("k_cache", k_cache, ref_name, ref);
  c.dim("k_cache", k_cache, 3, head_dim, hd_of.c_str());
  if (k) c.dim("k_cache", k_cache, 2, k->dim(1), "n_kv_heads of k");
  c.tensor("v_cache", v_cache, 4, kCacheLayout, {dt});
  c.same_device("v_cache", v_cache, ref_name, ref);
  for (int i = 0; i < 4; ++i) c.dim("v_cache", v_cache, i, k_cache.dim(i), "shape of k_cache");
}

// The q/k norms of `options`: both or neither; [head_dim] on ref's device,
// of a weight dtype ops::rms_norm takes there; a finite eps >= 0.
void check_norms(const detail::OpCheck& c, const RopeOptions& options, const char* ref_name, const Tensor& ref,
                 int64_t head_dim) {
  if (!options.q_norm && !options.k_norm) return;
  if (!options.q_norm || !options.k_norm) {
    const char* missing = options.q_norm ? "k_norm" : "q_norm";
    c.fail_arg(missing, fmt::format("expected q_norm and k_norm together (both or neither), got {} without {}",
                                    options.q_norm ? "q_norm" : "k_norm", missing));
  }
  const std::string hd_of = fmt::format("head_dim of {}", ref_name);
  for (const auto& [arg, w] :
       {std::pair<const char*, const Tensor*>{"q_norm", options.q_norm}, {"k_norm", options.k_norm}}) {
    if (ref.device().is_cpu())
      c.tensor(arg, *w, 1, "[head_dim]", {DType::F32, DType::BF16, DType::F16});
    else
      c.tensor(arg, *w, 1, "[head_dim]", {DType::F32, DType::BF16});
    c.same_device(arg, *w, ref_name, ref);
    c.dim(arg, *w, 0, head_dim, hd_of);
  }
  if (!(options.norm_eps >= 0.0f) || !std::isfinite(options.norm_eps))
    c.fail_arg("norm_eps", fmt::format("expected a finite eps >= 0, got {}", options.norm_eps));
}

using Inputs = std::vector<std::pair<const char*, const Tensor*>>;

// The norms, when given, join the inputs the outputs must stay apart from.
Inputs with_norms(Inputs inputs, const RopeOptions& options) {
  if (options.q_norm) inputs.emplace_back("q_norm", options.q_norm);
  if (options.k_norm) inputs.emplace_back("k_norm", options.k_norm);
  return inputs;
}

// The outputs (q, k_cache, v_cache) share memory with no input and with
// each other.
void check_outputs_apart(const detail::OpCheck& c, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const Inputs& inputs) {
  for (const auto& [arg, t] : inputs) c.no_overlap("q", q, arg, *t, false);
  for (const auto& [arg, cache] : {std::pair<const char*, const Tensor*>{"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    for (const auto& [in_arg, t] : inputs) c.no_overlap(arg, *cache, in_arg, *t, false);
    c.no_overlap(arg, *cache, "q", q, false);
  }
  c.no_overlap("v_cache", v_cache, "k_cache", k_cache, false);
}

}  // namespace

void rope_write_kv_cache(Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                         float attention_factor, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache,
                         const RopeOptions& options) {
  const detail::OpCheck c("rope_write_kv_cache");
  // The CPU computes in F32; the CUDA kernel reads and writes BF16.
  const DType dt = q.defined() && !q.device().is_cpu() ? DType::BF16 : DType::F32;
  c.tensor("q", q, 3, "[n_tokens, n_heads, head_dim]", {dt});
  const int64_t n_tokens = q.dim(0), head_dim = q.dim(2);
  c.tensor("k", k, 3, "[n_tokens, n_kv_heads, head_dim]", {dt});
  c.same_device("k", k, "q", q);
  c.dim("k", k, 0, n_tokens, "n_tokens of q");
  c.dim("k", k, 2, head_dim, "head_dim of q");
  c.tensor("v", v, 3, "[n_tokens, n_kv_heads, head_dim]", {dt});
  c.same_device("v", v, "q", q);
  for (int i = 0; i < 3; ++i) c.dim("v", v, i, k.dim(i), "shape of k");
  check_rotary_and_caches(c, "q", q, n_tokens, head_dim, dt, positions, inv_freq, attention_factor, slot_mapping,
                          k_cache, v_cache, &k);
  check_norms(c, options, "q", q, head_dim);
  check_outputs_apart(
      c, q, k_cache, v_cache,
      with_norms(
          {{"k", &k}, {"v", &v}, {"positions", &positions}, {"inv_freq", &inv_freq}, {"slot_mapping", &slot_mapping}},
          options));
  c.cache_slots(slot_mapping, k_cache.dim(0) * k_cache.dim(1));  // before anything is written
  c.kernel(q.device(), &Kernels::rope_write_kv_cache)(q, k, v, positions, inv_freq, attention_factor, slot_mapping,
                                                      k_cache, v_cache, options);
}

void rope_write_kv_cache_fused(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                               float attention_factor, const Tensor& slot_mapping, Tensor& q, Tensor& k_cache,
                               Tensor& v_cache, const RopeOptions& options) {
  const detail::OpCheck c("rope_write_kv_cache_fused");
  const DType dt = qkv.defined() && !qkv.device().is_cpu() ? DType::BF16 : DType::F32;
  c.tensor("qkv", qkv, 3, "[n_tokens, n_heads + 2 n_kv_heads, head_dim]", {dt});
  const int64_t n_tokens = qkv.dim(0), head_dim = qkv.dim(2);
  c.tensor("q", q, 3, "[n_tokens, n_heads, head_dim]", {dt});
  c.same_device("q", q, "qkv", qkv);
  c.dim("q", q, 0, n_tokens, "n_tokens of qkv");
  c.dim("q", q, 2, head_dim, "head_dim of qkv");
  check_rotary_and_caches(c, "qkv", qkv, n_tokens, head_dim, dt, positions, inv_freq, attention_factor, slot_mapping,
                          k_cache, v_cache, nullptr);
  c.dim("qkv", qkv, 1, q.dim(1) + 2 * k_cache.dim(2), "n_heads of q + 2 n_kv_heads of k_cache");
  check_norms(c, options, "qkv", qkv, head_dim);
  check_outputs_apart(
      c, q, k_cache, v_cache,
      with_norms({{"qkv", &qkv}, {"positions", &positions}, {"inv_freq", &inv_freq}, {"slot_mapping", &slot_mapping}},
                 options));
  c.cache_slots(slot_mapping, k_cache.dim(0) * k_cache.dim(1));  // before anything is written
  c.kernel(qkv.device(), &Kernels::rope_write_kv_cache_fused)(qkv, positions, inv_freq, attention_factor, slot_mapping,
                                                              q, k_cache, v_cache, options);
}

}  // namespace kite::ops
