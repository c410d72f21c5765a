#include "model/decoder.h"

#include <cmath>

#include "backend/ops/ops.h"
#include "core/error.h"
#include "model/sampling.h"

namespace kite {

namespace {
// y = x @ w^T (+ bias) for a dense or quantized weight.
void linear(const Tensor& x, const QuantWeight& w, const Tensor* bias, Tensor& y) {
  if (w.quantized())
    ops::linear_q(x, w, bias, y);
  else
    ops::linear(x, w.dense, bias, y);
}
const Tensor* opt(const Tensor& t) { return t.defined() ? &t : nullptr; }
}  // namespace

QuantWeight& layer_linear(LayerWeights& l, std::string_view name) {
  if (name == "self_attn.q_proj") return l.attn.wq;
  if (name == "self_attn.k_proj") return l.attn.wk;
  if (name == "self_attn.v_proj") return l.attn.wv;
  if (name == "self_attn.o_proj") return l.attn.wo;
  if (name == "mlp.gate_proj") return l.mlp.gate;
  if (name == "mlp.up_proj") return l.mlp.up;
  if (name == "mlp.down_proj") return l.mlp.down;
  fail("model", std::string(name), "not a linear of a decoder layer");
}

const QuantWeight& layer_linear(const LayerWeights& l, std::string_view name) {
  return layer_linear(const_cast<LayerWeights&>(l), name);
}

DecoderWeights load_decoder_weights(const ModelConfig& c, const ArchTraits& traits, const WeightLookup& get,
                                    const WeightExists& has, const LinearLookup& get_linear_opt) {
  const LinearLookup get_linear = get_linear_opt ? get_linear_opt : [&](const std::string& m, int64_t out, int64_t in) {
    return QuantWeight::from_dense(get(m + ".weight", {out, in}));
  };
  const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
  const int64_t ffn = c.intermediate_size;
  DecoderWeights w;
  w.embed = get("model.embed_tokens.weight", {c.vocab_size, d});
  w.final_norm = get("model.norm.weight", {d});
  if (c.tie_word_embeddings && !has("lm_head.weight")) {
    w.lm_head = QuantWeight::from_dense(w.embed);
  } else {
    w.lm_head = get_linear("lm_head", c.vocab_size, d);
  }
  w.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[size_t(i)];
    l.attn_norm = get(p + "input_layernorm.weight", {d});
    l.mlp_norm = get(p + "post_attention_layernorm.weight", {d});
    l.attn.wq = get_linear(p + "self_attn.q_proj", q_dim, d);
    l.attn.wk = get_linear(p + "self_attn.k_proj", kv_dim, d);
    l.attn.wv = get_linear(p + "self_attn.v_proj", kv_dim, d);
    l.attn.wo = get_linear(p + "self_attn.o_proj", d, q_dim);
    if (traits.qkv_bias || c.attention_bias) {
      l.attn.bq = get(p + "self_attn.q_proj.bias", {q_dim});
      l.attn.bk = get(p + "self_attn.k_proj.bias", {kv_dim});
      l.attn.bv = get(p + "self_attn.v_proj.bias", {kv_dim});
    }
    if (traits.qk_norm) {
      l.attn.q_norm = get(p + "self_attn.q_norm.weight", {hd});
      l.attn.k_norm = get(p + "self_attn.k_norm.weight", {hd});
    }
    l.mlp.gate = get_linear(p + "mlp.gate_proj", ffn, d);
    l.mlp.up = get_linear(p + "mlp.up_proj", ffn, d);
    l.mlp.down = get_linear(p + "mlp.down_proj", d, ffn);
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
  n += w_.final_norm.nbytes() + w_.lm_head.storage_bytes();
  for (const LayerWeights& l : w_.layers) {
    for (const Tensor* t :
         {&l.attn_norm, &l.mlp_norm, &l.attn.bq, &l.attn.bk, &l.attn.bv, &l.attn.q_norm, &l.attn.k_norm})
      if (t->defined()) n += t->nbytes();
    for (const QuantWeight* q : {&l.attn.wq, &l.attn.wk, &l.attn.wv, &l.attn.wo, &l.mlp.gate, &l.mlp.up, &l.mlp.down})
      n += q->storage_bytes();
  }
  return n;
}

void DecoderModel::attention_block(const LayerWeights& w, int64_t layer, const Tensor& x, const Attend& attend,
                                   Tensor& out, const LayerObserver* observer) {
  const ModelConfig& c = config_;
  const int64_t n = x.dim(0), hd = c.head_dim;
  const Device dev = x.device();
  Tensor q = Tensor::empty({n, c.num_heads * hd}, DType::F32, dev);     // [n, n_heads*hd]
  Tensor k = Tensor::empty({n, c.num_kv_heads * hd}, DType::F32, dev);  // [n, n_kv*hd]
  Tensor v = Tensor::empty({n, c.num_kv_heads * hd}, DType::F32, dev);  // [n, n_kv*hd]
  if (observer) {
    (*observer)("self_attn.q_proj", x);
    (*observer)("self_attn.k_proj", x);
    (*observer)("self_attn.v_proj", x);
  }
  linear(x, w.attn.wq, opt(w.attn.bq), q);
  linear(x, w.attn.wk, opt(w.attn.bk), k);
  linear(x, w.attn.wv, opt(w.attn.bv), v);
  if (w.attn.q_norm.defined()) {
    Tensor qf = q.reshape({n * c.num_heads, hd});
    ops::rms_norm(qf, w.attn.q_norm, float(c.rms_norm_eps), qf);
    Tensor kf = k.reshape({n * c.num_kv_heads, hd});
    ops::rms_norm(kf, w.attn.k_norm, float(c.rms_norm_eps), kf);
  }
  Tensor attn = Tensor::empty({n, c.num_heads, hd}, DType::F32, dev);  // [n, n_heads, hd]
  attend(layer, q.reshape({n, c.num_heads, hd}), k.reshape({n, c.num_kv_heads, hd}), v.reshape({n, c.num_kv_heads, hd}),
         attn);
  Tensor attn2 = attn.reshape({n, c.num_heads * hd});  // [n, n_heads*hd]
  if (observer) {
    (*observer)("k_cache", k);  // rotated by attend
    (*observer)("v_cache", v);
    (*observer)("self_attn.o_proj", attn2);
  }
  linear(attn2, w.attn.wo, nullptr, out);
}

void DecoderModel::mlp_block(const MlpWeights& w, const Tensor& x, Tensor& out, const LayerObserver* observer) {
  const int64_t n = x.dim(0), ffn = config_.intermediate_size;
  Tensor gate = Tensor::empty({n, ffn}, DType::F32, x.device());  // [n, ffn]
  Tensor up = Tensor::empty({n, ffn}, DType::F32, x.device());    // [n, ffn]
  if (observer) {
    (*observer)("mlp.gate_proj", x);
    (*observer)("mlp.up_proj", x);
  }
  linear(x, w.gate, nullptr, gate);
  linear(x, w.up, nullptr, up);
  ops::silu_mul(gate, up, gate);
  if (observer) (*observer)("mlp.down_proj", gate);
  linear(gate, w.down, nullptr, out);
}

void DecoderModel::check_tokens(std::span<const int32_t> tokens, const char* source) const {
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size)
      fail(source, "tokens", "token id {} outside the vocabulary [0, {})", t, config_.vocab_size);
}

Tensor DecoderModel::run(std::span<const int32_t> tokens, std::span<const int32_t> logit_rows, const Attend& attend) {
  const ModelConfig& c = config_;
  const int64_t n = int64_t(tokens.size()), d = c.hidden_size;
  const Device dev = w_.embed.device();
  Tensor ids = Tensor::empty({n}, DType::I32);  // [n]
  std::copy(tokens.begin(), tokens.end(), ids.data_as<int32_t>());
  if (!dev.is_cpu()) ids = ids.to(dev);

  Tensor x = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] residual stream
  Tensor h = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] normed input of a block
  Tensor y = Tensor::empty({n, d}, DType::F32, dev);  // [n, d] block output
  ops::embedding(w_.embed, ids, x);
  for (int64_t l = 0; l < c.num_layers; ++l) layer(l, x, h, y, attend, nullptr);
  // The rows whose logits are wanted, gathered with the embedding op.
  Tensor rows = Tensor::empty({int64_t(logit_rows.size())}, DType::I32);  // [m]
  std::copy(logit_rows.begin(), logit_rows.end(), rows.data_as<int32_t>());
  if (!dev.is_cpu()) rows = rows.to(dev);
  const int64_t m = int64_t(logit_rows.size());
  Tensor last = Tensor::empty({m, d}, DType::F32, dev);  // [m, d]
  if (m > 0) ops::embedding(x, rows, last);
  Tensor normed = Tensor::empty({m, d}, DType::F32, dev);             // [m, d]
  Tensor logits = Tensor::empty({m, c.vocab_size}, DType::F32, dev);  // [m, vocab]
  if (m > 0) {
    ops::rms_norm(last, w_.final_norm, float(c.rms_norm_eps), normed);
    linear(normed, w_.lm_head, nullptr, logits);
  }
  return dev.is_cpu() ? logits : logits.to(kCpu);
}

void DecoderModel::layer(int64_t l, Tensor& x, Tensor& h, Tensor& y, const Attend& attend,
                         const LayerObserver* observer) {
  const LayerWeights& lw = w_.layers[size_t(l)];
  const float eps = float(config_.rms_norm_eps);
  ops::rms_norm(x, lw.attn_norm, eps, h);
  attention_block(lw, l, h, attend, y, observer);
  ops::add(x, y, x);
  ops::rms_norm(x, lw.mlp_norm, eps, h);
  mlp_block(lw.mlp, h, y, observer);
  ops::add(x, y, x);
}

Tensor DecoderModel::embed(std::span<const int32_t> tokens) {
  check_tokens(tokens, "embed");
  const int64_t n = int64_t(tokens.size());
  const Device dev = w_.embed.device();
  Tensor ids = Tensor::empty({n}, DType::I32);  // [n]
  std::copy(tokens.begin(), tokens.end(), ids.data_as<int32_t>());
  if (!dev.is_cpu()) ids = ids.to(dev);
  Tensor x = Tensor::empty({n, config_.hidden_size}, DType::F32, dev);  // [n, d]
  ops::embedding(w_.embed, ids, x);
  return x;
}

void DecoderModel::run_layer(int64_t l, Tensor& x, const LayerObserver& observer) {
  const ModelConfig& c = config_;
  const int64_t n = x.dim(0);
  const Device dev = x.device();
  Tensor positions = Tensor::empty({n}, DType::I32);  // [n]
  for (int64_t i = 0; i < n; ++i) positions.data_as<int32_t>()[i] = int32_t(i);
  const RopeFrequencies rope = rope_is_dynamic(c) ? rope_for(n) : static_rope_;
  Tensor inv_freq = Tensor::from_floats({int64_t(rope.inv_freq.size())}, rope.inv_freq);
  if (!dev.is_cpu()) {
    positions = positions.to(dev);
    inv_freq = inv_freq.to(dev);
  }
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  Attend attend = [&](int64_t, Tensor q, Tensor k, Tensor v, Tensor& out) {
    ops::rope(q, positions, inv_freq, rope.attention_factor);
    ops::rope(k, positions, inv_freq, rope.attention_factor);
    ops::attention(q, k, v, 0, scale, out);
  };
  Tensor h = Tensor::empty(x.shape(), DType::F32, dev), y = Tensor::empty(x.shape(), DType::F32, dev);
  layer(l, x, h, y, attend, observer ? &observer : nullptr);
}

Tensor DecoderModel::forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) {
  const ModelConfig& c = config_;
  const int64_t n = int64_t(tokens.size()), start = cache.size();
  if (n == 0) throw Error("forward", "tokens", "no tokens to run");
  if (start + n > cache.capacity())
    fail("forward", "tokens", "{} tokens after {} cached exceed the KV cache capacity {} (raise the context size)", n,
         start, cache.capacity());
  check_tokens(tokens, "forward");
  const Device dev = w_.embed.device();

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
    positions = positions.to(dev);
    inv_freq = inv_freq.to(dev);
  }
  const float scale = 1.0f / std::sqrt(float(c.head_dim)), attention_factor = rope->attention_factor;
  Attend attend = [&](int64_t layer, Tensor q, Tensor k, Tensor v, Tensor& out) {
    ops::rope(q, positions, inv_freq, attention_factor);
    ops::rope(k, positions, inv_freq, attention_factor);
    Tensor k_cache = cache.k(layer), v_cache = cache.v(layer);  // [capacity, n_kv, hd]
    k_cache.slice(0, start, start + n).copy_from(k);
    v_cache.slice(0, start, start + n).copy_from(v);
    ops::attention(q, k_cache.slice(0, 0, start + n), v_cache.slice(0, 0, start + n), start, scale, out);
  };
  std::vector<int32_t> rows;
  for (int64_t i = all_logits ? 0 : n - 1; i < n; ++i) rows.push_back(int32_t(i));
  Tensor logits = run(tokens, rows, attend);
  cache.set_size(start + n);
  return logits;
}

Tensor DecoderModel::forward_batch(const BatchInput& b, PagedKvCache& cache) {
  const ModelConfig& c = config_;
  const int64_t n = b.num_tokens(), n_seqs = b.num_seqs();
  const char* src = "forward_batch";
  if (n == 0) throw Error(src, "tokens", "no tokens to run");
  if (int64_t(b.positions.size()) != n || int64_t(b.slot_mapping.size()) != n)
    fail(src, "positions", "{} positions and {} slots for {} tokens; expected one each", b.positions.size(),
         b.slot_mapping.size(), n);
  if (int64_t(b.query_start.size()) != n_seqs + 1 || b.max_blocks < 1 ||
      int64_t(b.block_tables.size()) != n_seqs * b.max_blocks)
    fail(src, "query_start", "{} query starts and {} block-table entries for {} sequences of {} blocks",
         b.query_start.size(), b.block_tables.size(), n_seqs, b.max_blocks);
  if (cache.k(0).dim(2) != c.num_kv_heads || cache.k(0).dim(3) != c.head_dim)
    fail(src, "cache", "cache shape {} does not fit this model's K/V heads", cache.k(0).shape_str());
  check_tokens(b.tokens, src);
  for (int32_t r : b.logit_rows)
    if (r < 0 || r >= n) fail(src, "logit_rows", "row {} outside the batch of {} tokens", r, n);
  const Device dev = w_.embed.device();
  auto to_dev = [&](const std::vector<int32_t>& v, const Shape& shape) {
    Tensor t = Tensor::empty(shape, DType::I32);
    std::copy(v.begin(), v.end(), t.data_as<int32_t>());
    return dev.is_cpu() ? t : t.to(dev);
  };
  Tensor positions = to_dev(b.positions, {n});                           // [n]
  Tensor slots = to_dev(b.slot_mapping, {n});                            // [n]
  Tensor query_start = to_dev(b.query_start, {n_seqs + 1});              // [n_seqs + 1]
  Tensor context_lens = to_dev(b.context_lens, {n_seqs});                // [n_seqs]
  Tensor block_tables = to_dev(b.block_tables, {n_seqs, b.max_blocks});  // [n_seqs, max_blocks]

  // Dynamic NTK scaling depends on each sequence's length: rotate per sequence.
  const bool dynamic = rope_is_dynamic(c);
  std::vector<Tensor> seq_freqs;
  std::vector<float> seq_factors;
  if (dynamic) {
    for (int64_t s = 0; s < n_seqs; ++s) {
      RopeFrequencies r = rope_for(b.context_lens[size_t(s)]);
      Tensor f = Tensor::from_floats({int64_t(r.inv_freq.size())}, r.inv_freq);
      seq_freqs.push_back(dev.is_cpu() ? f : f.to(dev));
      seq_factors.push_back(r.attention_factor);
    }
  }
  Tensor inv_freq = Tensor::from_floats({int64_t(static_rope_.inv_freq.size())}, static_rope_.inv_freq);
  if (!dev.is_cpu()) inv_freq = inv_freq.to(dev);
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  Attend attend = [&](int64_t layer, Tensor q, Tensor k, Tensor v, Tensor& out) {
    if (!dynamic) {
      ops::rope(q, positions, inv_freq, static_rope_.attention_factor);
      ops::rope(k, positions, inv_freq, static_rope_.attention_factor);
    } else {
      for (int64_t s = 0; s < n_seqs; ++s) {
        const int64_t lo = b.query_start[size_t(s)], hi = b.query_start[size_t(s) + 1];
        if (hi <= lo) continue;
        Tensor qs = q.slice(0, lo, hi), ks = k.slice(0, lo, hi), ps = positions.slice(0, lo, hi);
        ops::rope(qs, ps, seq_freqs[size_t(s)], seq_factors[size_t(s)]);
        ops::rope(ks, ps, seq_freqs[size_t(s)], seq_factors[size_t(s)]);
      }
    }
    ops::write_kv_cache(k, v, slots, cache.k(layer), cache.v(layer));
    ops::paged_attention(q, cache.k(layer), cache.v(layer), query_start, context_lens, block_tables, scale, out);
  };
  return run(b.tokens, b.logit_rows, attend);
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

namespace kite {

PagedKvCache::PagedKvCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size, Device device, DType dtype)
    : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks < 1 || block_size < 1)
    fail("kv cache", "num_blocks", "{} blocks of {} tokens; expected at least one block of one token", num_blocks,
         block_size);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    k_.push_back(Tensor::zeros({num_blocks, block_size, c.num_kv_heads, c.head_dim}, dtype, device));
    v_.push_back(Tensor::zeros({num_blocks, block_size, c.num_kv_heads, c.head_dim}, dtype, device));
  }
}

PagedKvCache::PagedKvCache(std::vector<PagedKvCache> shards)
    : num_blocks_(shards.empty() ? 0 : shards[0].num_blocks_),
      block_size_(shards.empty() ? 0 : shards[0].block_size_),
      shards_(std::move(shards)) {
  for (const PagedKvCache& s : shards_)
    KITE_CHECK(s.num_blocks_ == num_blocks_ && s.block_size_ == block_size_ && s.shards_.empty(),
               "kv cache shards differ: {} x {} vs {} x {}", s.num_blocks_, s.block_size_, num_blocks_, block_size_);
  KITE_CHECK(!shards_.empty(), "a sharded kv cache needs at least one shard");
}

size_t PagedKvCache::bytes_per_block(const ModelConfig& c, int64_t block_size, DType dtype) {
  return size_t(2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim) * dtype_size(dtype);
}

void PagedKvCache::copy_block(int64_t src, int64_t dst) {
  KITE_CHECK(src >= 0 && src < num_blocks_ && dst >= 0 && dst < num_blocks_, "copy_block {} -> {} of {}", src, dst,
             num_blocks_);
  for (auto* caches : {&k_, &v_})
    for (Tensor& t : *caches) t.slice(0, dst, dst + 1).copy_from(t.slice(0, src, src + 1));
  for (PagedKvCache& s : shards_) s.copy_block(src, dst);
}

PagedKvCache Model::create_kv_cache(int64_t num_blocks, int64_t block_size) {
  return PagedKvCache(config_, num_blocks, block_size, device(), kv_dtype());
}

size_t Model::kv_bytes_per_block(int64_t block_size) const {
  return PagedKvCache::bytes_per_block(config_, block_size, kv_dtype());
}

std::vector<int32_t> Model::forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) {
  Tensor logits = forward_batch(batch, cache);  // [m, vocab] F32 on the CPU
  const int64_t m = logits.dim(0), vocab = logits.dim(1);
  std::vector<int32_t> ids(static_cast<size_t>(m));
  const float* p = logits.data_as<const float>();
  for (int64_t r = 0; r < m; ++r) ids[size_t(r)] = argmax({p + r * vocab, size_t(vocab)});
  return ids;
}

std::vector<ops::SampledToken> Model::forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                           ops::SampleBatch& sample) {
  if (has_device_argmax() && sample.plain_greedy()) {
    const std::vector<int32_t> ids = forward_batch_argmax(batch, cache);
    std::vector<ops::SampledToken> out(ids.size());
    for (size_t r = 0; r < ids.size(); ++r) out[r].token = ids[r];
    return out;
  }
  Tensor logits = forward_batch(batch, cache);  // [m, vocab] F32 on the CPU
  return ops::sample_rows(logits, sample);
}

}  // namespace kite
