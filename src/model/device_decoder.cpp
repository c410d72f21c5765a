#include "model/device_decoder.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "backend/backend.h"
#include "backend/ops/ops.h"
#include "backend/ops/trusted.h"
#include "core/error.h"
#include "model/sampling.h"

namespace kite {

namespace {

// A dense weight as BF16 on the host (converted when stored otherwise).
Tensor host_bf16(const QuantWeight& q, const std::string& what) {
  if (q.scheme != QuantScheme::Dense)
    fail(what, "weights", "quantized weights do not run on the device path yet; serve this checkpoint on the CPU");
  return q.dense.dtype() == DType::BF16 ? q.dense.contiguous() : q.dense.contiguous().to_dtype(DType::BF16);
}
Tensor host_bf16(const Tensor& t) {
  return t.dtype() == DType::BF16 ? t.contiguous() : t.contiguous().to_dtype(DType::BF16);
}

// Rows of several [rows_i, cols] BF16 host tensors stacked into one device tensor.
Tensor stack_rows(const std::vector<Tensor>& parts, Device dev) {
  int64_t rows = 0;
  const int64_t cols = parts[0].ndim() == 2 ? parts[0].dim(1) : 1;
  for (const Tensor& p : parts) rows += p.dim(0);
  Tensor host = parts[0].ndim() == 2 ? Tensor::empty({rows, cols}, DType::BF16) : Tensor::empty({rows}, DType::BF16);
  size_t off = 0;
  for (const Tensor& p : parts) {
    std::memcpy(static_cast<char*>(host.data()) + off, p.data(), p.nbytes());
    off += p.nbytes();
  }
  return host.to(dev);
}

// Rows [begin, end) of a 2-D host tensor (or elements of a 1-D one), padded
// with zero rows to `rows` when given.
Tensor host_rows(const Tensor& t, int64_t begin, int64_t end, int64_t rows = -1) {
  if (rows < 0) rows = end - begin;
  Tensor out = t.ndim() == 2 ? Tensor::zeros({rows, t.dim(1)}, t.dtype()) : Tensor::zeros({rows}, t.dtype());
  if (end > begin) out.slice(0, 0, end - begin).copy_from(t.slice(0, begin, end));
  return out;
}
// Columns [begin, end) of a 2-D host tensor.
Tensor host_cols(const Tensor& t, int64_t begin, int64_t end) { return t.slice(1, begin, end).contiguous(); }

}  // namespace

DeviceDecoderModel::DeviceDecoderModel(const DecoderModel& src, Device device, TensorParallelRank tp)
    : device_(device), tp_(tp) {
  config_ = src.config();
  path_ = src.path();
  const ModelConfig& c = config_;
  const DecoderWeights& w = src.weights();
  const std::string& where = path_;
  const int64_t N = tp.size, r = tp.rank;
  if (N < 1 || r < 0 || r >= N || (N > 1 && !tp.comm))
    fail(where, "tensor_parallel_size", "rank {} of {} is invalid", r, N);
  for (auto [count, field] :
       {std::pair{c.num_heads, "num_attention_heads"}, {c.intermediate_size, "intermediate_size"}})
    if (count % N != 0)
      fail(where, field, "{} does not split over {} tensor-parallel ranks; pick a --tensor-parallel-size dividing it",
           count, N);
  // KV heads split when they divide; with more ranks than KV heads each KV
  // head is replicated on N / n_kv ranks (as vLLM does), which needs N to be
  // a multiple of n_kv.
  const int64_t nkv = c.num_kv_heads;
  if (nkv % N != 0 && N % nkv != 0)
    fail(where, "num_key_value_heads",
         "{} KV heads neither split over {} ranks nor replicate evenly; pick a --tensor-parallel-size that divides "
         "them or is a multiple of them",
         nkv, N);
  if (rope_is_dynamic(c))
    fail(where, "rope_scaling", "dynamic NTK RoPE does not run on the device path yet; serve this model on the CPU");
  act_ = device.is_cpu() ? DType::F32 : DType::BF16;
  local_ = c;
  local_.num_heads = c.num_heads / N;
  local_.num_kv_heads = std::max<int64_t>(1, nkv / N);
  // This rank's first KV head: its own share, or the one its query heads use.
  const int64_t kv0 = nkv >= N ? r * (nkv / N) : r / (N / nkv);
  local_.intermediate_size = c.intermediate_size / N;
  const int64_t hd = c.head_dim, q_rows = local_.num_heads * hd, kv_rows = local_.num_kv_heads * hd;
  const int64_t ffn = local_.intermediate_size;
  // Vocabulary shards of equal size; the last one padded with zero rows
  // (their logits are gathered but never copied into the full row).
  vocab_shard_ = (c.vocab_size + N - 1) / N;
  const int64_t v0 = std::min<int64_t>(c.vocab_size, r * vocab_shard_);
  const int64_t v1 = std::min<int64_t>(c.vocab_size, v0 + vocab_shard_);
  const Tensor embed_all = host_bf16(w.embed);
  embed_ = host_rows(embed_all, v0, v1, vocab_shard_).to(device);
  final_norm_ = host_bf16(w.final_norm).to(device);
  const bool tied = w.lm_head.scheme == QuantScheme::Dense && w.lm_head.dense.data() == w.embed.data();
  lm_head_ = tied ? embed_ : host_rows(host_bf16(w.lm_head, where + " lm_head"), v0, v1, vocab_shard_).to(device);
  weight_bytes_ = size_t(c.hidden_size) * 2 + final_norm_.nbytes() + lm_head_.nbytes();
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    if (lw.attn.q_norm.defined())
      fail(where, "q_norm", "per-head q/k norms (Qwen3) do not run on the device path yet; serve on the CPU");
    const std::string what = where + " layer " + std::to_string(l);
    DeviceLayerWeights d;
    d.attn_norm = host_bf16(lw.attn_norm).to(device);
    d.mlp_norm = host_bf16(lw.mlp_norm).to(device);
    // Column-parallel: this rank's output rows of q, k, v, gate and up.
    d.wqkv = stack_rows({host_rows(host_bf16(lw.attn.wq, what), r * q_rows, (r + 1) * q_rows),
                         host_rows(host_bf16(lw.attn.wk, what), kv0 * hd, kv0 * hd + kv_rows),
                         host_rows(host_bf16(lw.attn.wv, what), kv0 * hd, kv0 * hd + kv_rows)},
                        device);
    if (lw.attn.bq.defined())
      d.bqkv = stack_rows({host_rows(host_bf16(lw.attn.bq), r * q_rows, (r + 1) * q_rows),
                           host_rows(host_bf16(lw.attn.bk), kv0 * hd, kv0 * hd + kv_rows),
                           host_rows(host_bf16(lw.attn.bv), kv0 * hd, kv0 * hd + kv_rows)},
                          device);
    // Row-parallel: the input columns matching this rank's heads / MLP columns.
    const Tensor wo = host_bf16(lw.attn.wo, what);
    d.wo = (N == 1 ? wo : host_cols(wo, r * q_rows, (r + 1) * q_rows)).to(device);
    d.w_gate_up = stack_rows({host_rows(host_bf16(lw.mlp.gate, what), r * ffn, (r + 1) * ffn),
                              host_rows(host_bf16(lw.mlp.up, what), r * ffn, (r + 1) * ffn)},
                             device);
    const Tensor down = host_bf16(lw.mlp.down, what);
    d.w_down = (N == 1 ? down : host_cols(down, r * ffn, (r + 1) * ffn)).to(device);
    for (const Tensor* t : {&d.attn_norm, &d.mlp_norm, &d.wqkv, &d.bqkv, &d.wo, &d.w_gate_up, &d.w_down})
      if (t->defined()) weight_bytes_ += t->nbytes();
    layers_.push_back(std::move(d));
  }
  RopeFrequencies rf = rope_frequencies(c, 0);
  inv_freq_ = Tensor::from_floats({int64_t(rf.inv_freq.size())}, rf.inv_freq).to(device);
  attention_factor_ = rf.attention_factor;
  synchronize(device);
}

PagedKvCache DeviceDecoderModel::create_kv_cache(int64_t num_blocks, int64_t block_size) {
  return PagedKvCache(local_, num_blocks, block_size, device_, act_);
}

size_t DeviceDecoderModel::kv_bytes_per_block(int64_t block_size) const {
  return PagedKvCache::bytes_per_block(local_, block_size, act_);
}

void DeviceDecoderModel::all_reduce(Tensor& y) {
  if (tp_.size > 1) tp_.comm->all_reduce_sum(y);
}

Tensor DeviceDecoderModel::forward(std::span<const int32_t>, KvCache&, bool) {
  throw Error(path_, "device",
              "the device model runs through the engine (kite generate, serve, bench); kite ppl runs on the CPU");
}

void DeviceDecoderModel::check_batch(const BatchInput& b, const PagedKvCache& cache) const {
  const ModelConfig& c = config_;
  const int64_t n = b.num_tokens(), n_seqs = b.num_seqs();
  const char* src = "forward_batch";
  if (n == 0) throw Error(src, "tokens", "no tokens to run");
  if (int64_t(b.positions.size()) != n || int64_t(b.slot_mapping.size()) != n ||
      int64_t(b.query_start.size()) != n_seqs + 1 || b.max_blocks < 1 ||
      int64_t(b.block_tables.size()) != n_seqs * b.max_blocks)
    fail(src, "batch", "inconsistent batch: {} tokens, {} positions, {} slots, {} query starts for {} sequences", n,
         b.positions.size(), b.slot_mapping.size(), b.query_start.size(), n_seqs);
  for (int32_t t : b.tokens)
    if (t < 0 || t >= c.vocab_size) fail(src, "tokens", "token id {} outside the vocabulary [0, {})", t, c.vocab_size);
  for (int32_t r : b.logit_rows)
    if (r < 0 || r >= n) fail(src, "logit_rows", "row {} outside the batch of {} tokens", r, n);
  // The kernels then run with ops::TrustedIndices: check here, on the host,
  // what they would otherwise copy back to check.
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

DeviceDecoderModel::Work DeviceDecoderModel::allocate_work(int64_t n, int64_t m) const {
  const ModelConfig& c = local_;  // this rank's heads and MLP columns
  const int64_t d = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t ffn = c.intermediate_size;
  const DType bf = act_;
  Work w;
  w.residual = Tensor::empty({n, d}, bf, device_);
  w.h = Tensor::empty({n, d}, bf, device_);
  w.y = Tensor::empty({n, d}, bf, device_);
  w.qkv = Tensor::empty({n, (nh + 2 * nkv) * hd}, bf, device_);
  w.q = Tensor::empty({n, nh, hd}, bf, device_);
  w.attn = Tensor::empty({n, nh, hd}, bf, device_);
  w.gate_up = Tensor::empty({n, 2 * ffn}, bf, device_);
  w.act = Tensor::empty({n, ffn}, bf, device_);
  w.last_y = Tensor::empty({m, d}, bf, device_);
  w.last_r = Tensor::empty({m, d}, bf, device_);
  w.normed = Tensor::empty({m, d}, bf, device_);
  w.logits = Tensor::empty({m, c.vocab_size}, DType::F32, device_);
  w.ids = Tensor::empty({m}, DType::I32, device_);
  if (tp_.size > 1) {
    w.shard_logits = Tensor::empty({m, vocab_shard_}, DType::F32, device_);
    w.gathered = Tensor::empty({int64_t(tp_.size), m, vocab_shard_}, DType::F32, device_);
  }
  return w;
}

DeviceDecoderModel::Work DeviceDecoderModel::work_prefix(const Work& w, int64_t n, int64_t m) const {
  Work p;
  for (auto [dst, src] : {std::pair{&p.residual, &w.residual},
                          {&p.h, &w.h},
                          {&p.y, &w.y},
                          {&p.qkv, &w.qkv},
                          {&p.q, &w.q},
                          {&p.attn, &w.attn},
                          {&p.gate_up, &w.gate_up},
                          {&p.act, &w.act}})
    *dst = src->slice(0, 0, n);
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

void DeviceDecoderModel::run(const Indices& ix, int64_t n, int64_t m, const ops::PagedAttentionHints& hints, Work& w,
                             PagedKvCache& cache) {
  const ModelConfig& c = local_;  // this rank's heads and MLP columns
  const int64_t hd = c.head_dim, q_dim = c.num_heads * hd, n_qkv = c.num_heads + 2 * c.num_kv_heads;
  const float eps = float(c.rms_norm_eps), scale = 1.0f / std::sqrt(float(hd));
  ops::TrustedIndices trusted;  // built from the engine's validated block tables
  if (tp_.size == 1) {
    ops::embedding(embed_, ix.tokens, w.residual);
  } else {  // each rank looks up its vocabulary shard (zeros elsewhere), then the sum
    ops::embedding_shard(embed_, ix.tokens, int64_t(tp_.rank) * vocab_shard_, w.residual);
    all_reduce(w.residual);
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    const DeviceLayerWeights& lw = layers_[l];
    if (l == 0)
      ops::rms_norm(w.residual, lw.attn_norm, eps, w.h);
    else
      ops::add_rms_norm(w.y, w.residual, lw.attn_norm, eps, w.h);  // residual += mlp out; h = norm(residual)
    ops::linear(w.h, lw.wqkv, lw.bqkv.defined() ? &lw.bqkv : nullptr, w.qkv);
    // q rotated into w.q, k rotated and v into the cache, read straight from the fused output.
    ops::rope_write_kv_cache_fused(w.qkv.reshape({n, n_qkv, hd}), ix.positions, inv_freq_, attention_factor_, ix.slots,
                                   w.q, cache.k(int64_t(l)), cache.v(int64_t(l)));
    ops::paged_attention(w.q, cache.k(int64_t(l)), cache.v(int64_t(l)), ix.query_start, ix.context_lens,
                         ix.block_tables, scale, hints, w.attn);
    ops::linear(w.attn.reshape({n, q_dim}), lw.wo, nullptr, w.y);
    all_reduce(w.y);                                            // row-parallel: the ranks' partial sums
    ops::add_rms_norm(w.y, w.residual, lw.mlp_norm, eps, w.h);  // residual += attn out; h = norm(residual)
    ops::linear(w.h, lw.w_gate_up, nullptr, w.gate_up);
    ops::silu_mul_fused(w.gate_up, w.act);  // silu(gate) * up from the fused [n, 2 ffn] output
    ops::linear(w.act, lw.w_down, nullptr, w.y);
    all_reduce(w.y);
  }
  if (m == 0) return;
  ops::embedding(w.y, ix.rows, w.last_y);  // row gathers of the logit rows
  ops::embedding(w.residual, ix.rows, w.last_r);
  ops::add_rms_norm(w.last_y, w.last_r, final_norm_, eps, w.normed);
  if (tp_.size == 1) {
    ops::linear(w.normed, lm_head_, nullptr, w.logits);
  } else {  // each rank's vocabulary shard, gathered into full rows
    ops::linear(w.normed, lm_head_, nullptr, w.shard_logits);
    tp_.comm->all_gather(w.shard_logits, w.gathered);  // [ranks, m, vocab_shard]
    const int64_t vocab = config_.vocab_size;
    for (int64_t r = 0; r < tp_.size; ++r) {
      const int64_t v0 = std::min(vocab, r * vocab_shard_), v1 = std::min(vocab, v0 + vocab_shard_);
      if (v1 > v0) w.logits.slice(1, v0, v1).copy_from(w.gathered.select(r).slice(1, 0, v1 - v0));
    }
  }
  ops::argmax(w.logits, w.ids);
}

DeviceDecoderModel::Work DeviceDecoderModel::forward_eager(const BatchInput& b, PagedKvCache& cache) {
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
  Tensor idx = host.to(device_);
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
  run(ix, n, m, hints, w, cache);
  return w;
}

size_t DeviceDecoderModel::activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) {
  // A profiling forward: one sequence prefilling max_batched_tokens tokens
  // into a scratch cache, every row's logits (the most any step asks for).
  if (device_.is_cpu()) return 0;
  const int64_t n = std::max<int64_t>(1, max_batched_tokens), bs = 16;
  synchronize(device_);
  const MemoryStats before = memory_stats(device_);
  reset_peak_memory(device_);
  {
    PagedKvCache scratch(local_, (n + bs - 1) / bs, bs, device_, act_);
    const size_t cache_bytes = memory_stats(device_).bytes_in_use - before.bytes_in_use;
    BatchInput b;
    for (int64_t i = 0; i < n; ++i) {
      b.tokens.push_back(int32_t(i % config_.vocab_size));
      b.positions.push_back(int32_t(i));
      b.slot_mapping.push_back(int32_t(i));
      b.logit_rows.push_back(int32_t(i));
    }
    b.query_start = {0, int32_t(n)};
    b.context_lens = {int32_t(n)};
    b.max_blocks = int32_t((n + bs - 1) / bs);
    for (int32_t j = 0; j < b.max_blocks; ++j) b.block_tables.push_back(j);
    { Work w = forward_eager(b, scratch); }
    synchronize(device_);
    const size_t peak = memory_stats(device_).peak_bytes_in_use;
    size_t act = peak > before.bytes_in_use + cache_bytes ? peak - before.bytes_in_use - cache_bytes : 0;
    // The graphs' buffers (prepare): one Work of max_num_seqs rows, held
    // beside whatever a step allocates.
    if (max_num_seqs > 0) {
      const Work g = allocate_work(max_num_seqs, max_num_seqs);
      for (const Tensor* t : {&g.residual, &g.h, &g.y, &g.qkv, &g.q, &g.attn, &g.gate_up, &g.act, &g.last_y, &g.last_r,
                              &g.normed, &g.logits, &g.ids, &g.shard_logits, &g.gathered})
        if (t->defined()) act += t->nbytes();
    }
    reset_peak_memory(device_);
    return act;
  }
}

namespace {
// Padded batch sizes with a recorded graph: 1, 2, 4, 8, then steps of 8 to
// 64, steps of 16 to 256, steps of 32 beyond.
std::vector<int64_t> graph_batch_sizes(int64_t max_seqs) {
  std::vector<int64_t> s;
  for (int64_t b = 1; b <= max_seqs; b = b < 8 ? b * 2 : b < 64 ? b + 8 : b < 256 ? b + 16 : b + 32) s.push_back(b);
  if (s.empty() || s.back() != max_seqs) s.push_back(max_seqs);
  return s;
}
}  // namespace

void DeviceDecoderModel::prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) {
  graphs_.clear();
  graph_sizes_.clear();
  graph_cache_ = nullptr;
  // No graphs on the CPU, nor over collectives that run on the host.
  if (enforce_eager || max_num_seqs < 1 || device_.is_cpu() || (tp_.comm && !tp_.comm->graph_safe())) return;
  const int64_t B = max_num_seqs;
  graph_max_blocks_ = (max_model_len + cache.block_size() - 1) / cache.block_size();
  const MemoryStats before = memory_stats(device_);
  graph_work_ = allocate_work(B, B);
  // Inputs (layout: upload_graph_inputs).
  const int64_t W = graph_max_blocks_;
  graph_in_ = Tensor::zeros({6 * B + 1 + B * W}, DType::I32, device_);
  int64_t o = 0;
  auto view = [&](int64_t len) {
    Tensor t = graph_in_.slice(0, o, o + len);
    o += len;
    return t;
  };
  graph_ix_.tokens = view(B);
  graph_ix_.positions = view(B);
  graph_ix_.slots = view(B);
  graph_ix_.query_start = view(B + 1);
  graph_ix_.context_lens = view(B);
  graph_ix_.block_tables = view(B * W);
  graph_ix_.rows = view(B);
  ops::PagedAttentionHints hints;
  hints.max_query_len = 1;
  hints.max_context_len = max_model_len;
  hints.kv_splits = 1;  // no split-KV workspace inside a graph
  graph_sizes_ = graph_batch_sizes(B);
  upload_graph_inputs(nullptr, B);  // all padding: recording reads valid indices and writes no slot
  for (int64_t b : graph_sizes_) {
    Indices ix = graph_ix_;
    ix.tokens = ix.tokens.slice(0, 0, b);
    ix.positions = ix.positions.slice(0, 0, b);
    ix.slots = ix.slots.slice(0, 0, b);
    ix.query_start = ix.query_start.slice(0, 0, b + 1);
    ix.context_lens = ix.context_lens.slice(0, 0, b);
    ix.block_tables = ix.block_tables.slice(0, 0, b * W).reshape({b, W});  // [b, W]: row i at i * W
    ix.rows = ix.rows.slice(0, 0, b);
    Work w = work_prefix(graph_work_, b, b);
    run(ix, b, b, hints, w, cache);  // warm-up: kernels configured, GEMM algorithms chosen
    synchronize(device_);
    begin_capture(device_);
    try {
      run(ix, b, b, hints, w, cache);
    } catch (...) {
      try {
        end_capture(device_);
      } catch (...) {
      }
      throw;
    }
    graphs_.push_back(end_capture(device_));
  }
  synchronize(device_);
  graph_cache_ = cache.k(0).data();  // set last: until then no step uses the graphs
  const MemoryStats after = memory_stats(device_);
  graph_bytes_ = after.bytes_in_use > before.bytes_in_use ? after.bytes_in_use - before.bytes_in_use : 0;
}

size_t DeviceDecoderModel::graph_for(int64_t n) const {
  size_t g = 0;
  while (graph_sizes_[g] < n) ++g;
  return g;
}

void DeviceDecoderModel::upload_graph_inputs(const BatchInput* b, int64_t padded) {
  // graph_in_'s layout: tokens, positions, slots [B] each, query_start
  // [B + 1], context_lens [B], block_tables [B, W], rows [B]. Rows past the
  // batch (or all, without one) are padding: one token at position 0, no
  // cache write (slot -1), context 1 read from block 0.
  const int64_t B = graph_sizes_.back(), W = graph_max_blocks_, n = b ? b->num_tokens() : 0;
  std::vector<int32_t> host(size_t(6 * B + 1 + B * W), 0);
  int32_t* hp = host.data();
  for (int64_t i = 0; i < padded; ++i) {
    const bool real = i < n;
    hp[i] = real ? b->tokens[size_t(i)] : 0;
    hp[B + i] = real ? b->positions[size_t(i)] : 0;
    hp[2 * B + i] = real ? b->slot_mapping[size_t(i)] : -1;
    hp[3 * B + i] = int32_t(i);
    hp[4 * B + 1 + i] = real ? b->context_lens[size_t(i)] : 1;
    if (real)
      for (int64_t j = 0; j < b->max_blocks; ++j)
        hp[5 * B + 1 + i * W + j] = std::max<int32_t>(0, b->block_tables[size_t(i * b->max_blocks + j)]);
    hp[5 * B + 1 + B * W + i] = int32_t(i);
  }
  hp[3 * B + padded] = int32_t(padded);
  Tensor h = Tensor::empty({int64_t(host.size())}, DType::I32);
  std::memcpy(h.data(), host.data(), host.size() * sizeof(int32_t));
  graph_in_.copy_from(h);
}

bool DeviceDecoderModel::forward_graph(const BatchInput& b, PagedKvCache& cache, int64_t* rows) {
  const int64_t n = b.num_tokens(), n_seqs = b.num_seqs();
  if (!graph_cache_ || cache.k(0).data() != graph_cache_ || n != n_seqs || n > graph_sizes_.back() ||
      b.max_blocks > graph_max_blocks_ || int64_t(b.logit_rows.size()) != n)
    return false;
  for (int64_t i = 0; i < n; ++i)
    if (b.logit_rows[size_t(i)] != i) return false;
  check_batch(b, cache);
  const size_t g = graph_for(n);
  upload_graph_inputs(&b, graph_sizes_[g]);
  graphs_[g].replay();
  *rows = n;
  return true;
}

double DeviceDecoderModel::graph_step_ms(int64_t batch, int reps) {
  if (!graph_cache_ || batch > graph_sizes_.back() || reps < 1) return 0;
  const size_t g = graph_for(batch);
  synchronize(device_);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) graphs_[g].replay();
  synchronize(device_);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

Tensor DeviceDecoderModel::forward_batch(const BatchInput& b, PagedKvCache& cache) {
  int64_t m = 0;
  if (forward_graph(b, cache, &m)) return graph_work_.logits.slice(0, 0, m).to(kCpu);
  Work w = forward_eager(b, cache);
  return w.logits.to(kCpu);  // [m, vocab]
}

std::vector<int32_t> DeviceDecoderModel::forward_batch_argmax(const BatchInput& b, PagedKvCache& cache) {
  int64_t m = 0;
  Tensor ids;
  if (forward_graph(b, cache, &m)) {
    ids = graph_work_.ids.slice(0, 0, m).to(kCpu);
  } else {
    Work w = forward_eager(b, cache);
    m = w.ids.dim(0);
    ids = w.ids.to(kCpu);
  }
  return std::vector<int32_t>(ids.data_as<const int32_t>(), ids.data_as<const int32_t>() + m);
}

std::vector<ops::SampledToken> DeviceDecoderModel::forward_batch_sample(const BatchInput& b, PagedKvCache& cache,
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
    const Tensor h = ids.to(kCpu);
    std::vector<ops::SampledToken> out(size_t(h.dim(0)));
    for (size_t r = 0; r < out.size(); ++r) out[r].token = h.data_as<const int32_t>()[r];
    return out;
  }
  return ops::sample_rows(logits, sample);
}

std::unique_ptr<Model> load_model_on(const std::string& path, Device device) {
  if (device.is_cpu()) return load_model(path);
  return std::make_unique<DeviceDecoderModel>(*load_decoder_model(path, "on " + device.str()), device);
}

}  // namespace kite
