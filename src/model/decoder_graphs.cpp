// The runner's decode graphs (CUDA: prepare records one decode step per
// padded batch size; a step that fits one replays it) and its memory
// profile; loading a model onto a device.
#include <chrono>
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"
#include "model/decoder.h"

namespace kite {

size_t DecoderModel::activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) {
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
      for (const Tensor* t : g.all())
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

void DecoderModel::prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) {
  graphs_.clear();
  graph_sizes_.clear();
  graph_cache_ = nullptr;
  // No graphs on the CPU, nor over collectives that run on the host, nor
  // for dynamic RoPE (its per-token frequencies are made on the host each
  // step), nor over stacked linears (they allocate their parts' outputs).
  bool linears_graph_safe = true;
  for (const Layer& l : layers_)
    for (const Linear& lin : l.linears) linears_graph_safe = linears_graph_safe && lin.graph_safe();
  if (enforce_eager || max_num_seqs < 1 || device_.is_cpu() || (tp_.comm && !tp_.comm->graph_safe()) || dynamic_rope_ ||
      !linears_graph_safe)
    return;
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

size_t DecoderModel::graph_for(int64_t n) const {
  size_t g = 0;
  while (graph_sizes_[g] < n) ++g;
  return g;
}

void DecoderModel::upload_graph_inputs(const BatchInput* b, int64_t padded) {
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

bool DecoderModel::forward_graph(const BatchInput& b, PagedKvCache& cache, int64_t* rows) {
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

double DecoderModel::graph_step_ms(int64_t batch, int reps) {
  if (!graph_cache_ || batch > graph_sizes_.back() || reps < 1) return 0;
  const size_t g = graph_for(batch);
  synchronize(device_);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) graphs_[g].replay();
  synchronize(device_);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

std::unique_ptr<Model> load_model_on(const std::string& path, Device device, const std::string& quantization) {
  LoadOptions o;
  o.device = device;
  o.quantization = quantization;
  return load_model(path, o);
}

std::unique_ptr<DecoderModel> load_decoder_model(const std::string& path, const std::string& purpose) {
  std::unique_ptr<Model> m = load_model(path);
  auto* dec = dynamic_cast<DecoderModel*>(m.get());
  if (!dec) fail(path, "model", "this model kind does not run {}", purpose);
  m.release();
  return std::unique_ptr<DecoderModel>(dec);
}

}  // namespace kite
