#include "model/decoder.h"

#include <cmath>

#include "backend/ops/ops.h"
#include "core/error.h"

namespace kite {

DecoderWeights load_decoder_weights(const ModelConfig& c, const ArchTraits& traits, const WeightLookup& get,
                                    const WeightExists& has) {
  const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
  const int64_t ffn = c.intermediate_size;
  DecoderWeights w;
  w.embed = get("model.embed_tokens.weight", {c.vocab_size, d});
  w.final_norm = get("model.norm.weight", {d});
  if (c.tie_word_embeddings && !has("lm_head.weight")) {
    w.lm_head = w.embed;
  } else {
    w.lm_head = get("lm_head.weight", {c.vocab_size, d});
  }
  w.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[size_t(i)];
    l.attn_norm = get(p + "input_layernorm.weight", {d});
    l.mlp_norm = get(p + "post_attention_layernorm.weight", {d});
    l.attn.wq = get(p + "self_attn.q_proj.weight", {q_dim, d});
    l.attn.wk = get(p + "self_attn.k_proj.weight", {kv_dim, d});
    l.attn.wv = get(p + "self_attn.v_proj.weight", {kv_dim, d});
    l.attn.wo = get(p + "self_attn.o_proj.weight", {d, q_dim});
    if (traits.qkv_bias || c.attention_bias) {
      l.attn.bq = get(p + "self_attn.q_proj.bias", {q_dim});
      l.attn.bk = get(p + "self_attn.k_proj.bias", {kv_dim});
      l.attn.bv = get(p + "self_attn.v_proj.bias", {kv_dim});
    }
    if (traits.qk_norm) {
      l.attn.q_norm = get(p + "self_attn.q_norm.weight", {hd});
      l.attn.k_norm = get(p + "self_attn.k_norm.weight", {hd});
    }
    l.mlp.gate = get(p + "mlp.gate_proj.weight", {ffn, d});
    l.mlp.up = get(p + "mlp.up_proj.weight", {ffn, d});
    l.mlp.down = get(p + "mlp.down_proj.weight", {d, ffn});
  }
  return w;
}

DecoderModel::DecoderModel(ModelConfig config, std::string path, DecoderWeights weights,
                           std::vector<std::shared_ptr<void>> keep, std::vector<float> rope_freq_factors)
    : w_(std::move(weights)), keep_(std::move(keep)), rope_freq_factors_(std::move(rope_freq_factors)) {
  config_ = std::move(config);
  path_ = std::move(path);
  static_rope_ = rope_for(0);
  if (!rope_freq_factors_.empty() && rope_freq_factors_.size() != static_rope_.inv_freq.size())
    fail(path_, "rope_freqs.weight", "{} factors but the model rotates {} frequency pairs", rope_freq_factors_.size(),
         static_rope_.inv_freq.size());
}

RopeFrequencies DecoderModel::rope_for(int64_t seq_len) const {
  RopeFrequencies r = rope_frequencies(config_, seq_len);
  if (rope_freq_factors_.size() == r.inv_freq.size())
    for (size_t i = 0; i < r.inv_freq.size(); ++i) r.inv_freq[i] /= rope_freq_factors_[i];
  return r;
}

size_t DecoderModel::weight_bytes() const {
  size_t n = w_.embed.nbytes() / size_t(config_.vocab_size);  // one embedding row per token
  n += w_.final_norm.nbytes() + w_.lm_head.nbytes();
  for (const LayerWeights& l : w_.layers) {
    for (const Tensor* t :
         {&l.attn_norm, &l.mlp_norm, &l.attn.wq, &l.attn.wk, &l.attn.wv, &l.attn.wo, &l.attn.bq, &l.attn.bk, &l.attn.bv,
          &l.attn.q_norm, &l.attn.k_norm, &l.mlp.gate, &l.mlp.up, &l.mlp.down})
      if (t->defined()) n += t->nbytes();
  }
  return n;
}

void DecoderModel::attention_block(const LayerWeights& w, int64_t layer, const Tensor& x, const Tensor& positions,
                                   const Tensor& inv_freq, float attention_factor, KvCache& cache, Tensor& out) {
  const ModelConfig& c = config_;
  const int64_t n = x.dim(0), hd = c.head_dim, start = cache.size();
  Tensor q = Tensor::empty({n, c.num_heads * hd}, DType::F32, x.device());  // [n, n_heads*hd]
  Tensor k_cache = cache.k(layer), v_cache = cache.v(layer);                // [capacity, n_kv, hd]
  // New K/V rows are written straight into the cache.
  Tensor k_new = k_cache.slice(0, start, start + n).reshape({n, c.num_kv_heads * hd});
  Tensor v_new = v_cache.slice(0, start, start + n).reshape({n, c.num_kv_heads * hd});
  ops::linear(x, w.attn.wq, w.attn.bq.defined() ? &w.attn.bq : nullptr, q);
  ops::linear(x, w.attn.wk, w.attn.bk.defined() ? &w.attn.bk : nullptr, k_new);
  ops::linear(x, w.attn.wv, w.attn.bv.defined() ? &w.attn.bv : nullptr, v_new);
  Tensor q3 = q.reshape({n, c.num_heads, hd});         // [n, n_heads, hd]
  Tensor k3 = k_new.reshape({n, c.num_kv_heads, hd});  // [n, n_kv, hd]
  if (w.attn.q_norm.defined()) {
    Tensor qf = q.reshape({n * c.num_heads, hd});
    ops::rms_norm(qf, w.attn.q_norm, float(c.rms_norm_eps), qf);
    Tensor kf = k_new.reshape({n * c.num_kv_heads, hd});
    ops::rms_norm(kf, w.attn.k_norm, float(c.rms_norm_eps), kf);
  }
  ops::rope(q3, positions, inv_freq, attention_factor);
  ops::rope(k3, positions, inv_freq, attention_factor);
  Tensor attn = Tensor::empty({n, c.num_heads, hd}, DType::F32, x.device());  // [n, n_heads, hd]
  const float scale = 1.0f / std::sqrt(float(hd));
  ops::attention(q3, k_cache.slice(0, 0, start + n), v_cache.slice(0, 0, start + n), start, scale, attn);
  ops::linear(attn.reshape({n, c.num_heads * hd}), w.attn.wo, nullptr, out);
}

void DecoderModel::mlp_block(const MlpWeights& w, const Tensor& x, Tensor& out) {
  const int64_t n = x.dim(0), ffn = config_.intermediate_size;
  Tensor gate = Tensor::empty({n, ffn}, DType::F32, x.device());  // [n, ffn]
  Tensor up = Tensor::empty({n, ffn}, DType::F32, x.device());    // [n, ffn]
  ops::linear(x, w.gate, nullptr, gate);
  ops::linear(x, w.up, nullptr, up);
  ops::silu_mul(gate, up, gate);
  ops::linear(gate, w.down, nullptr, out);
}

Tensor DecoderModel::forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) {
  const ModelConfig& c = config_;
  const int64_t n = int64_t(tokens.size()), start = cache.size(), d = c.hidden_size;
  if (n == 0) throw Error("forward", "tokens", "no tokens to run");
  if (start + n > cache.capacity())
    fail("forward", "tokens", "{} tokens after {} cached exceed the KV cache capacity {} (raise the context size)", n,
         start, cache.capacity());
  for (int32_t t : tokens)
    if (t < 0 || t >= c.vocab_size)
      fail("forward", "tokens", "token id {} outside the vocabulary [0, {})", t, c.vocab_size);
  const Device dev = w_.embed.device();

  Tensor ids = Tensor::empty({n}, DType::I32);  // [n]
  std::copy(tokens.begin(), tokens.end(), ids.data_as<int32_t>());
  Tensor positions = Tensor::empty({n}, DType::I32);  // [n]
  for (int64_t i = 0; i < n; ++i) positions.data_as<int32_t>()[i] = int32_t(start + i);
  RopeFrequencies dyn;
  const RopeFrequencies* rope = &static_rope_;
  if (rope_is_dynamic(c)) {
    dyn = rope_for(start + n);
    rope = &dyn;
  }
  Tensor inv_freq = Tensor::from_floats({int64_t(rope->inv_freq.size())}, rope->inv_freq);
  if (!dev.is_cpu()) {
    ids = ids.to(dev);
    positions = positions.to(dev);
    inv_freq = inv_freq.to(dev);
  }

  Tensor x = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] residual stream
  Tensor h = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] normed input of a block
  Tensor y = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] block output
  ops::embedding(w_.embed, ids, x);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w_.layers[size_t(l)];
    ops::rms_norm(x, lw.attn_norm, float(c.rms_norm_eps), h);
    attention_block(lw, l, h, positions, inv_freq, rope->attention_factor, cache, y);
    ops::add(x, y, x);
    ops::rms_norm(x, lw.mlp_norm, float(c.rms_norm_eps), h);
    mlp_block(lw.mlp, h, y);
    ops::add(x, y, x);
  }
  cache.set_size(start + n);
  Tensor last = all_logits ? x : x.slice(0, n - 1, n);  // [m, d]
  Tensor normed = Tensor::empty(last.shape(), DType::F32, dev);
  ops::rms_norm(last, w_.final_norm, float(c.rms_norm_eps), normed);
  Tensor logits = Tensor::empty({last.dim(0), c.vocab_size}, DType::F32, dev);  // [m, vocab]
  ops::linear(normed, w_.lm_head, nullptr, logits);
  return dev.is_cpu() ? logits : logits.to(kCpu);
}

KvCache::KvCache(const ModelConfig& c, int64_t max_tokens, Device device) : capacity_(max_tokens) {
  for (int64_t l = 0; l < c.num_layers; ++l) {
    k_.push_back(Tensor::empty({max_tokens, c.num_kv_heads, c.head_dim}, DType::F32, device));
    v_.push_back(Tensor::empty({max_tokens, c.num_kv_heads, c.head_dim}, DType::F32, device));
  }
}

void KvCache::set_size(int64_t n) {
  KITE_CHECK(n >= 0 && n <= capacity_, "kv cache size {} of {}", n, capacity_);
  size_ = n;
}

}  // namespace kite
