#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/ops/ops.h"
#include "backend/ops/trusted.h"
#include "core/error.h"

namespace kite {

namespace {

// Rows [begin, end) of a 2-D host tensor (or elements of a 1-D one), padded
// with zero rows to `rows`.
Tensor host_rows(const Tensor& t, int64_t begin, int64_t end, int64_t rows) {
  Tensor h = t.device().is_cpu() ? t : t.to(kCpu);
  Tensor out = h.ndim() == 2 ? Tensor::zeros({rows, h.dim(1)}, h.dtype()) : Tensor::zeros({rows}, h.dtype());
  if (end > begin) out.slice(0, 0, end - begin).copy_from(h.slice(0, begin, end));
  return out;
}

}  // namespace

// The runner's side of Step: the step's indices, cache and buffers.
class DecoderModel::RunnerStep final : public Step {
 public:
  RunnerStep(DecoderModel& m, const Indices& ix, const ops::PagedAttentionHints& hints, Work& w, int64_t n,
             const LayerObserver* observer)
      : m_(m), ix_(ix), hints_(hints), w_(w), observer_(observer) {
    config_ = &m.local_;
    n_ = n;
    residual_ = w.residual;
    h_ = w.h;
    y_ = w.y;
    buffers_ = w.buffers;
    eps_ = float(m.local_.rms_norm_eps);
    scale_ = 1.0f / std::sqrt(float(m.local_.head_dim));
  }
  void begin_layer(int64_t l, Tensor k_cache, Tensor v_cache) {
    layer_ = l;
    k_cache_ = std::move(k_cache);
    v_cache_ = std::move(v_cache);
  }
  bool pending() const { return pending_; }

  void add_norm(const Tensor& weight) override {
    if (pending_)
      ops::add_rms_norm(y_, residual_, weight, eps_, h_);  // residual += y; h = norm(residual)
    else
      ops::rms_norm(residual_, weight, eps_, h_);
    pending_ = false;
  }
  void linear(const Linear& w, const Tensor& x, Tensor& y) override {
    observe(w, x);
    w.forward(x, y);
  }
  void linear_reduce(const Linear& w, const Tensor& x, Tensor& y) override {
    observe(w, x);
    w.forward(x, y);
    m_.all_reduce(y);  // row-parallel: the ranks' partial sums
    if (y.data() == y_.data()) pending_ = true;
  }
  void attention(const Tensor& qkv, const AttentionSpec& a, Tensor& out) override {
    const ModelConfig& c = *config_;
    const Tensor& freqs = w_.rope_freqs.defined() ? w_.rope_freqs : m_.inv_freq_;
    ops::RopeOptions ro;
    ro.q_norm = a.q_norm;
    ro.k_norm = a.k_norm;
    ro.norm_eps = eps_;
    // q rotated into w.q; k rotated and v into the cache, read straight from the fused output.
    ops::rope_write_kv_cache_fused(qkv, ix_.positions, freqs, m_.attention_factor_, ix_.slots, w_.q, k_cache_, v_cache_,
                                   ro);
    Tensor o = out.reshape({n_, c.num_heads, c.head_dim});  // [n, n_heads, hd]
    ops::paged_attention(w_.q, k_cache_, v_cache_, ix_.query_start, ix_.context_lens, ix_.block_tables, scale_, hints_,
                         a.sliding_window, o);
    if (observer_) {  // run_layer's scratch cache holds the sequence in slots 0..n-1
      const int64_t kv = c.num_kv_heads * c.head_dim;
      (*observer_)("k_cache", k_cache_.reshape({-1, kv}).slice(0, 0, n_));
      (*observer_)("v_cache", v_cache_.reshape({-1, kv}).slice(0, 0, n_));
    }
  }

 private:
  void observe(const Linear& w, const Tensor& x) {
    if (!observer_) return;
    const std::vector<Linear>& ls = m_.layers_[size_t(layer_)].linears;
    for (size_t i = 0; i < ls.size(); ++i)
      if (&ls[i] == &w)
        for (const std::string& module : m_.slot_modules_[i]) (*observer_)(module, x);
  }

  DecoderModel& m_;
  const Indices& ix_;
  const ops::PagedAttentionHints& hints_;
  Work& w_;
  const LayerObserver* observer_;
  Tensor k_cache_, v_cache_;
  float eps_ = 0, scale_ = 1;
  bool pending_ = false;  // y holds a block's output not yet added to the residual
};

DecoderModel::DecoderModel(ModelConfig config, std::string path, std::shared_ptr<ModelWeights> weights, Device device,
                           TensorParallelRank tp)
    : weights_(std::move(weights)), device_(device), tp_(tp) {
  config_ = std::move(config);
  path_ = std::move(path);
  arch_ = &architecture_for(config_, path_);
  const ModelConfig& c = config_;
  const std::string& where = path_;
  const int64_t N = tp.size;
  if (N < 1 || tp.rank < 0 || tp.rank >= N || (N > 1 && !tp.comm))
    fail(where, "tensor_parallel_size", "rank {} of {} is invalid", tp.rank, N);
  for (auto [count, field] :
       {std::pair{c.num_heads, "num_attention_heads"}, {c.intermediate_size, "intermediate_size"}})
    if (count % N != 0)
      fail(where, field, "{} does not split over {} tensor-parallel ranks; pick a --tensor-parallel-size dividing it",
           count, N);
  // KV heads split when they divide; with more ranks than KV heads each KV
  // head is replicated on N / n_kv ranks (as vLLM does).
  const int64_t nkv = c.num_kv_heads;
  if (nkv % N != 0 && N % nkv != 0)
    fail(where, "num_key_value_heads",
         "{} KV heads neither split over {} ranks nor replicate evenly; pick a --tensor-parallel-size that divides "
         "them or is a multiple of them",
         nkv, N);
  act_ = device.is_cpu() ? DType::F32 : DType::BF16;
  local_ = c;
  local_.num_heads = c.num_heads / N;
  local_.num_kv_heads = std::max<int64_t>(1, nkv / N);
  local_.intermediate_size = c.intermediate_size / N;
  spec_ = arch_->layer_spec(c, local_);
  for (const LinearSlot& s : spec_.linears) {
    slot_modules_.emplace_back();
    for (const LinearPart& p : s.parts) slot_modules_.back().push_back(p.module);
  }
  build_globals();
  layers_.resize(size_t(c.num_layers));
  layer_bytes_.assign(size_t(c.num_layers), 0);
  for (int64_t l = 0; l < c.num_layers; ++l) build_layer(l);

  RopeFrequencies rf = rope_frequencies(c, 0);
  const std::vector<float>& factors = weights_->rope_freq_factors;
  if (!factors.empty() && factors.size() != rf.inv_freq.size())
    fail(where, "rope_freqs.weight", "{} factors but the model rotates {} frequency pairs", factors.size(),
         rf.inv_freq.size());
  for (size_t i = 0; i < factors.size(); ++i) rf.inv_freq[i] /= factors[i];
  inv_freq_ = Tensor::from_floats({int64_t(rf.inv_freq.size())}, rf.inv_freq);
  if (!device.is_cpu()) inv_freq_ = inv_freq_.to(device);
  attention_factor_ = rf.attention_factor;
  dynamic_rope_ = rope_is_dynamic(c);
  synchronize(device);
}

DecoderModel::~DecoderModel() = default;

size_t DecoderModel::weight_bytes() const {
  // One embedding row per token, the final norm, the lm_head and the layers.
  size_t n = size_t(config_.hidden_size) * dtype_size(embed_.dtype()) + final_norm_.nbytes() + lm_head_.bytes();
  for (size_t b : layer_bytes_) n += b;
  return n;
}

void DecoderModel::build_globals() {
  const ModelConfig& c = config_;
  const int64_t N = tp_.size, r = tp_.rank;
  auto on_device = [&](const Tensor& t) {
    if (device_.is_cpu()) return t.device().is_cpu() ? t : t.to(kCpu);
    Tensor h = t.device().is_cpu() ? t.contiguous() : t.to(kCpu);
    return (h.dtype() == act_ ? h : h.to_dtype(act_)).to(device_);
  };
  // Vocabulary shards of equal size; the last one padded with zero rows
  // (their logits are gathered but never copied into the full row).
  vocab_shard_ = (c.vocab_size + N - 1) / N;
  const int64_t v0 = std::min<int64_t>(c.vocab_size, r * vocab_shard_);
  const int64_t v1 = std::min<int64_t>(c.vocab_size, v0 + vocab_shard_);
  const Tensor& embed = weights_->tensor("model.embed_tokens.weight");
  embed_ = on_device(N == 1 ? embed : host_rows(embed, v0, v1, vocab_shard_));
  final_norm_ = on_device(weights_->tensor("model.norm.weight"));
  rebuild_lm_head();
}

void DecoderModel::rebuild_lm_head() {
  const ModelConfig& c = config_;
  const int64_t N = tp_.size;
  const int64_t v0 = std::min<int64_t>(c.vocab_size, tp_.rank * vocab_shard_);
  const int64_t v1 = std::min<int64_t>(c.vocab_size, v0 + vocab_shard_);
  QuantWeight w;
  if (weights_->lm_head_tied()) {
    w = QuantWeight::from_dense(embed_);  // this rank's (padded) embedding rows, on the device: no second copy
  } else {
    const QuantWeight& full = weights_->linear("lm_head");
    w = shard_rows(full, v0, v1, path_ + " lm_head");
    if (v1 - v0 < vocab_shard_) {
      if (w.quantized())
        fail(path_, "lm_head", "a quantized lm_head needs a vocabulary ({}) the {} ranks split evenly", c.vocab_size,
             N);
      w = QuantWeight::from_dense(host_rows(w.dense, 0, v1 - v0, vocab_shard_));
    }
  }
  lm_head_ = Linear(path_ + " lm_head", w, Tensor(), device_, act_);
}

void DecoderModel::build_layer(int64_t l) {
  const ModelConfig& c = config_;
  const int64_t N = tp_.size, r = tp_.rank, hd = c.head_dim, nkv = c.num_kv_heads;
  // This rank's first KV head: its own share, or the one its query heads use.
  const int64_t kv0 = nkv >= N ? r * (nkv / N) : r / (N / nkv);
  const std::string p = "model.layers." + std::to_string(l) + ".";
  Layer L;
  size_t bytes = 0;
  for (const TensorSlot& t : spec_.tensors) {
    const Tensor& src = weights_->tensor(p + t.name);
    Tensor d = src.device().is_cpu() ? src : src.to(kCpu);
    if (!device_.is_cpu()) d = (d.dtype() == act_ ? d.contiguous() : d.contiguous().to_dtype(act_)).to(device_);
    bytes += d.nbytes();
    L.tensors.push_back(std::move(d));
  }
  for (const LinearSlot& slot : spec_.linears) {
    std::vector<QuantWeight> parts;
    std::vector<Tensor> biases;
    std::vector<int64_t> outs;
    std::string name = p;
    for (const LinearPart& part : slot.parts) {
      const std::string module = p + part.module;
      name += (name.size() == p.size() ? "" : "+") + part.module;
      const QuantWeight& w = weights_->linear(module);
      Tensor bias = part.bias ? weights_->tensor(module + ".bias") : Tensor();
      int64_t b0 = 0, b1 = part.out;
      switch (part.split) {
        case Split::Heads:
        case Split::Rows: b0 = r * part.out / N, b1 = (r + 1) * part.out / N; break;
        case Split::KvHeads: b0 = kv0 * hd, b1 = kv0 * hd + local_.num_kv_heads * hd; break;
        case Split::Cols: break;
      }
      if (part.split == Split::Cols) {
        parts.push_back(shard_cols(w, r * part.in / N, (r + 1) * part.in / N, module));
        if (r != 0) bias = Tensor();  // the sum over ranks adds it once
      } else {
        parts.push_back(shard_rows(w, b0, b1, module));
        if (bias.defined()) bias = (bias.device().is_cpu() ? bias : bias.to(kCpu)).slice(0, b0, b1).contiguous();
      }
      outs.push_back(parts.back().out);
      biases.push_back(bias);
    }
    if (parts.size() == 1) {
      L.linears.emplace_back(name, parts[0], biases[0], device_, act_);
    } else if (can_fuse_rows(parts)) {
      L.linears.emplace_back(name, fuse_rows(parts, name), fuse_bias(biases, outs), device_, act_);
    } else {  // parts quantized differently: each its own kernel, into its rows of the output
      std::vector<Linear> each;
      for (size_t i = 0; i < parts.size(); ++i)
        each.emplace_back(p + slot.parts[i].module, parts[i], biases[i], device_, act_);
      L.linears.push_back(Linear::stacked(name, std::move(each)));
    }
    bytes += L.linears.back().bytes();
  }
  layer_bytes_[size_t(l)] = bytes;
  layers_[size_t(l)] = std::move(L);
}

void DecoderModel::rebuild_layer(int64_t l) {
  if (l < 0 || l >= config_.num_layers) fail(path_, "layer", "{} outside [0, {})", l, config_.num_layers);
  graphs_.clear();  // recorded over the old weights
  graph_sizes_.clear();
  graph_cache_ = nullptr;
  build_layer(l);
}

std::vector<std::string> DecoderModel::kernel_summary() const {
  std::vector<std::string> out;
  if (!layers_.empty())
    for (size_t i = 0; i < spec_.linears.size(); ++i)
      out.push_back(spec_.linears[i].name + ": " + std::string(layers_[0].linears[i].kernel_name()));
  out.push_back("lm_head: " + std::string(lm_head_.kernel_name()));
  return out;
}

PagedKvCache DecoderModel::create_kv_cache(int64_t num_blocks, int64_t block_size) {
  return PagedKvCache(local_, num_blocks, block_size, device_, act_);
}

size_t DecoderModel::kv_bytes_per_block(int64_t block_size) const {
  return PagedKvCache::bytes_per_block(local_, block_size, act_);
}

void DecoderModel::all_reduce(Tensor& y) {
  if (tp_.size > 1) tp_.comm->all_reduce_sum(y);
}

void DecoderModel::check_tokens(std::span<const int32_t> tokens, const char* source) const {
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size)
      fail(source, "tokens", "token id {} outside the vocabulary [0, {})", t, config_.vocab_size);
}

void DecoderModel::check_batch(const BatchInput& b, const PagedKvCache& cache) const {
  const int64_t n = b.num_tokens(), n_seqs = b.num_seqs();
  const char* src = "forward_batch";
  if (n == 0) throw Error(src, "tokens", "no tokens to run");
  if (int64_t(b.positions.size()) != n || int64_t(b.slot_mapping.size()) != n ||
      int64_t(b.query_start.size()) != n_seqs + 1 || b.max_blocks < 1 ||
      int64_t(b.block_tables.size()) != n_seqs * b.max_blocks)
    fail(src, "batch", "inconsistent batch: {} tokens, {} positions, {} slots, {} query starts for {} sequences", n,
         b.positions.size(), b.slot_mapping.size(), b.query_start.size(), n_seqs);
  if (b.query_start.front() != 0 || b.query_start.back() != n)
    fail(src, "query_start", "expected 0 first and {} (the tokens) last, got {} and {}", n, b.query_start.front(),
         b.query_start.back());
  check_tokens(b.tokens, src);
  for (int32_t r : b.logit_rows)
    if (r < 0 || r >= n) fail(src, "logit_rows", "row {} outside the batch of {} tokens", r, n);
  if (cache.num_shards() == 0 && (cache.k(0).dim(2) != local_.num_kv_heads || cache.k(0).dim(3) != local_.head_dim ||
                                  cache.k(0).dtype() != act_ || cache.k(0).device() != device_))
    fail(src, "cache", "cache {} {} on {} does not fit this model's K/V heads ({} on {})",
         dtype_name(cache.k(0).dtype()), cache.k(0).shape_str(), cache.k(0).device().str(), dtype_name(act_),
         device_.str());
  // The kernels run with ops::TrustedIndices: check here, on the host, what
  // they would otherwise copy back to check.
  const int64_t nb = cache.num_blocks(), bs = cache.block_size();
  for (int32_t sl : b.slot_mapping)
    if (sl < -1 || sl >= nb * bs) fail(src, "slot_mapping", "slot {} outside the cache of {} slots", sl, nb * bs);
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t q0 = b.query_start[size_t(s)], q1 = b.query_start[size_t(s) + 1], len = b.context_lens[size_t(s)];
    if (q0 > q1 || q1 > n || len < q1 - q0 || len > b.max_blocks * bs)
      fail(src, "query_start", "sequence {}: queries [{}, {}) with context {} do not fit the batch", s, q0, q1, len);
    for (int64_t j = 0; j < (len + bs - 1) / bs; ++j) {
      const int32_t blk = b.block_tables[size_t(s * b.max_blocks + j)];
      if (blk < 0 || blk >= nb)
        fail(src, "block_tables", "sequence {} block {} is {}; expected [0, {})", s, j, blk, nb);
    }
  }
}

std::vector<const Tensor*> DecoderModel::Work::all() const {
  std::vector<const Tensor*> v = {&residual,     &h,        &y,         &q, &last_y, &last_r, &normed, &logits, &ids,
                                  &shard_logits, &gathered, &rope_freqs};
  for (const Tensor& b : buffers) v.push_back(&b);
  return v;
}

DecoderModel::Work DecoderModel::allocate_work(int64_t n, int64_t m) const {
  const ModelConfig& c = local_;
  const int64_t d = c.hidden_size;
  Work w;
  w.residual = Tensor::empty({n, d}, act_, device_);
  w.h = Tensor::empty({n, d}, act_, device_);
  w.y = Tensor::empty({n, d}, act_, device_);
  for (int64_t cols : spec_.buffers) w.buffers.push_back(Tensor::empty({n, cols}, act_, device_));
  w.q = Tensor::empty({n, c.num_heads, c.head_dim}, act_, device_);
  w.last_y = Tensor::empty({m, d}, act_, device_);
  w.last_r = Tensor::empty({m, d}, act_, device_);
  w.normed = Tensor::empty({m, d}, act_, device_);
  w.logits = Tensor::empty({m, c.vocab_size}, DType::F32, device_);
  w.ids = Tensor::empty({m}, DType::I32, device_);
  if (tp_.size > 1) {
    w.shard_logits = Tensor::empty({m, vocab_shard_}, DType::F32, device_);
    w.gathered = Tensor::empty({int64_t(tp_.size), m, vocab_shard_}, DType::F32, device_);
  }
  return w;
}

DecoderModel::Work DecoderModel::work_prefix(const Work& w, int64_t n, int64_t m) const {
  Work p;
  for (auto [dst, src] : {std::pair{&p.residual, &w.residual}, {&p.h, &w.h}, {&p.y, &w.y}, {&p.q, &w.q}})
    *dst = src->slice(0, 0, n);
  for (const Tensor& b : w.buffers) p.buffers.push_back(b.slice(0, 0, n));
  for (auto [dst, src] : {std::pair{&p.last_y, &w.last_y},
                          {&p.last_r, &w.last_r},
                          {&p.normed, &w.normed},
                          {&p.logits, &w.logits},
                          {&p.ids, &w.ids},
                          {&p.shard_logits, &w.shard_logits}})
    if (src->defined()) *dst = src->slice(0, 0, m);
  if (w.gathered.defined())  // contiguous: the first ranks * m rows of the buffer
    p.gathered = w.gathered.reshape({-1})
                     .slice(0, 0, int64_t(tp_.size) * m * vocab_shard_)
                     .reshape({int64_t(tp_.size), m, vocab_shard_});
  return p;
}

void DecoderModel::run(const Indices& ix, int64_t n, int64_t m, const ops::PagedAttentionHints& hints, Work& w,
                       PagedKvCache& cache) {
  ops::TrustedIndices trusted;  // built from validated batches (check_batch) or the graph inputs
  if (tp_.size == 1) {
    ops::embedding(embed_, ix.tokens, w.residual);
  } else {  // each rank looks up its vocabulary shard (zeros elsewhere), then the sum
    ops::embedding_shard(embed_, ix.tokens, int64_t(tp_.rank) * vocab_shard_, w.residual);
    all_reduce(w.residual);
  }
  RunnerStep step(*this, ix, hints, w, n, nullptr);
  for (size_t l = 0; l < layers_.size(); ++l) {
    step.begin_layer(int64_t(l), cache.k(int64_t(l)), cache.v(int64_t(l)));
    arch_->forward_layer(layers_[l], step);
  }
  if (m > 0) logits_into(ix, w);
}

void DecoderModel::logits_into(const Indices& ix, Work& w) {
  ops::embedding(w.y, ix.rows, w.last_y);  // row gathers of the logit rows
  ops::embedding(w.residual, ix.rows, w.last_r);
  const float eps = float(local_.rms_norm_eps);
  ops::add_rms_norm(w.last_y, w.last_r, final_norm_, eps, w.normed);
  if (tp_.size == 1) {
    lm_head_.forward(w.normed, w.logits);
  } else {  // each rank's vocabulary shard, gathered into full rows
    lm_head_.forward(w.normed, w.shard_logits);
    tp_.comm->all_gather(w.shard_logits, w.gathered);  // [ranks, m, vocab_shard]
    const int64_t vocab = config_.vocab_size;
    for (int64_t r = 0; r < tp_.size; ++r) {
      const int64_t v0 = std::min(vocab, r * vocab_shard_), v1 = std::min(vocab, v0 + vocab_shard_);
      if (v1 > v0) w.logits.slice(1, v0, v1).copy_from(w.gathered.select(r).slice(1, 0, v1 - v0));
    }
  }
  ops::argmax(w.logits, w.ids);
}

Tensor DecoderModel::dynamic_rope_freqs(const BatchInput& b) const {
  // Dynamic NTK scaling grows the base with each sequence's length: every
  // token of sequence s rotates with the frequencies of context_lens[s].
  const RopeFrequencies r0 = rope_frequencies(config_, 0);
  const int64_t half = int64_t(r0.inv_freq.size()), n = b.num_tokens();
  std::vector<float> table(size_t(n * half));
  for (int64_t s = 0; s < b.num_seqs(); ++s) {
    const RopeFrequencies r = rope_frequencies(config_, b.context_lens[size_t(s)]);
    for (int64_t t = b.query_start[size_t(s)]; t < b.query_start[size_t(s) + 1]; ++t)
      std::copy(r.inv_freq.begin(), r.inv_freq.end(), table.begin() + t * half);
  }
  Tensor t = Tensor::from_floats({n, half}, table);
  return device_.is_cpu() ? t : t.to(device_);
}

DecoderModel::Work DecoderModel::forward_eager(const BatchInput& b, PagedKvCache& cache) {
  check_batch(b, cache);
  const int64_t n = b.num_tokens(), n_seqs = b.num_seqs(), m = int64_t(b.logit_rows.size());
  // Every index array in one host buffer, one copy to the device.
  const int64_t total = 3 * n + (n_seqs + 1) + n_seqs + n_seqs * b.max_blocks + m;
  Tensor host = Tensor::empty({total}, DType::I32);
  int32_t* p = host.data_as<int32_t>();
  int64_t off = 0;
  auto put = [&](const std::vector<int32_t>& v) {
    const int64_t at = off;
    if (!v.empty()) std::memcpy(p + off, v.data(), v.size() * sizeof(int32_t));
    off += int64_t(v.size());
    return at;
  };
  const int64_t o_tok = put(b.tokens), o_pos = put(b.positions), o_slot = put(b.slot_mapping);
  const int64_t o_qs = put(b.query_start), o_ctx = put(b.context_lens), o_bt = put(b.block_tables);
  const int64_t o_rows = put(b.logit_rows);
  Tensor idx = device_.is_cpu() ? host : host.to(device_);
  Indices ix;
  ix.tokens = idx.slice(0, o_tok, o_tok + n);              // [n]
  ix.positions = idx.slice(0, o_pos, o_pos + n);           // [n]
  ix.slots = idx.slice(0, o_slot, o_slot + n);             // [n]
  ix.query_start = idx.slice(0, o_qs, o_qs + n_seqs + 1);  // [n_seqs + 1]
  ix.context_lens = idx.slice(0, o_ctx, o_ctx + n_seqs);   // [n_seqs]
  ix.block_tables = idx.slice(0, o_bt, o_bt + n_seqs * b.max_blocks).reshape({n_seqs, b.max_blocks});
  ix.rows = idx.slice(0, o_rows, o_rows + m);  // [m]
  ops::PagedAttentionHints hints;
  hints.max_query_len = 0;
  hints.max_context_len = 0;
  for (int64_t s = 0; s < n_seqs; ++s) {
    hints.max_query_len =
        std::max<int64_t>(hints.max_query_len, b.query_start[size_t(s) + 1] - b.query_start[size_t(s)]);
    hints.max_context_len = std::max<int64_t>(hints.max_context_len, b.context_lens[size_t(s)]);
  }
  Work w = allocate_work(n, m);
  if (dynamic_rope_) w.rope_freqs = dynamic_rope_freqs(b);
  run(ix, n, m, hints, w, cache);
  return w;
}

Tensor DecoderModel::embed(std::span<const int32_t> tokens) {
  check_tokens(tokens, "embed");
  const int64_t n = int64_t(tokens.size());
  Tensor ids = Tensor::empty({n}, DType::I32);  // [n]
  std::copy(tokens.begin(), tokens.end(), ids.data_as<int32_t>());
  if (!device_.is_cpu()) ids = ids.to(device_);
  Tensor x = Tensor::empty({n, config_.hidden_size}, act_, device_);  // [n, d]
  if (tp_.size == 1) {
    ops::embedding(embed_, ids, x);
  } else {
    ops::embedding_shard(embed_, ids, int64_t(tp_.rank) * vocab_shard_, x);
    all_reduce(x);
  }
  return x;
}

void DecoderModel::run_layer(int64_t l, Tensor& x, const LayerObserver& observer) {
  if (l < 0 || l >= config_.num_layers) fail(path_, "layer", "{} outside [0, {})", l, config_.num_layers);
  const int64_t n = x.dim(0), bs = KvCache::kBlockSize, blocks = (n + bs - 1) / bs;
  // One sequence at positions 0..n-1 in a scratch cache of one layer.
  ModelConfig one = local_;
  one.num_layers = 1;
  PagedKvCache scratch(one, blocks, bs, device_, act_);
  BatchInput b;
  for (int64_t i = 0; i < n; ++i) {
    b.tokens.push_back(0);
    b.positions.push_back(int32_t(i));
    b.slot_mapping.push_back(int32_t(i));
  }
  b.query_start = {0, int32_t(n)};
  b.context_lens = {int32_t(n)};
  b.max_blocks = int32_t(blocks);
  for (int64_t j = 0; j < blocks; ++j) b.block_tables.push_back(int32_t(j));
  auto dev = [&](const std::vector<int32_t>& v, const Shape& shape) {
    Tensor t = Tensor::empty(shape, DType::I32);
    std::copy(v.begin(), v.end(), t.data_as<int32_t>());
    return device_.is_cpu() ? t : t.to(device_);
  };
  Indices ix;
  ix.positions = dev(b.positions, {n});
  ix.slots = dev(b.slot_mapping, {n});
  ix.query_start = dev(b.query_start, {2});
  ix.context_lens = dev(b.context_lens, {1});
  ix.block_tables = dev(b.block_tables, {1, blocks});
  ops::PagedAttentionHints hints;
  hints.max_query_len = n;
  hints.max_context_len = n;
  Work w = allocate_work(n, 0);
  w.residual = x;
  if (dynamic_rope_) w.rope_freqs = dynamic_rope_freqs(b);
  RunnerStep step(*this, ix, hints, w, n, observer ? &observer : nullptr);
  step.begin_layer(l, scratch.k(0), scratch.v(0));
  arch_->forward_layer(layers_[size_t(l)], step);
  if (step.pending()) ops::add(x, w.y, x);
}

Tensor DecoderModel::forward_batch(const BatchInput& b, PagedKvCache& cache) {
  int64_t m = 0;
  if (forward_graph(b, cache, &m)) return graph_work_.logits.slice(0, 0, m).to(kCpu);
  Work w = forward_eager(b, cache);
  return device_.is_cpu() ? w.logits : w.logits.to(kCpu);  // [m, vocab]
}

std::vector<int32_t> DecoderModel::forward_batch_argmax(const BatchInput& b, PagedKvCache& cache) {
  int64_t m = 0;
  Tensor ids;
  if (forward_graph(b, cache, &m)) {
    ids = graph_work_.ids.slice(0, 0, m).to(kCpu);
  } else {
    Work w = forward_eager(b, cache);
    m = w.ids.dim(0);
    ids = device_.is_cpu() ? w.ids : w.ids.to(kCpu);
  }
  return std::vector<int32_t>(ids.data_as<const int32_t>(), ids.data_as<const int32_t>() + m);
}

std::vector<ops::SampledToken> DecoderModel::forward_batch_sample(const BatchInput& b, PagedKvCache& cache,
                                                                  ops::SampleBatch& sample) {
  int64_t m = 0;
  Work w;  // the eager forward's buffers, alive until the results are back
  Tensor logits, ids;
  if (forward_graph(b, cache, &m)) {
    logits = graph_work_.logits.slice(0, 0, m);  // [m, vocab] F32
    ids = graph_work_.ids.slice(0, 0, m);        // [m] I32
  } else {
    w = forward_eager(b, cache);
    logits = w.logits;
    ids = w.ids;
  }
  if (sample.plain_greedy()) {
    const Tensor h = ids.device().is_cpu() ? ids : ids.to(kCpu);
    std::vector<ops::SampledToken> out(size_t(h.dim(0)));
    for (size_t r = 0; r < out.size(); ++r) out[r].token = h.data_as<const int32_t>()[r];
    return out;
  }
  return ops::sample_rows(logits, sample);
}

}  // namespace kite
