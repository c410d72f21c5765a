#pragma once
// A loaded causal language model: config, weights on a device, and a
// forward pass over one sequence's new tokens with its KV cache.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/ops/sample.h"
#include "core/tensor.h"
#include "formats/hf_config.h"

namespace kite {

// Paged K/V storage for the engine: per layer, K and V of
// [num_blocks, block_size, n_kv_heads, head_dim] in the model's KV dtype
// (F32 on the CPU, BF16 on CUDA). Which slots belong to which sequence is
// the engine's business (engine/block_manager.h).
//
// A tensor-parallel model's cache is made of shards, one per rank, each
// holding that rank's KV heads on its device; the engine sees one cache of
// num_blocks blocks (block ids mean the same block in every shard).
class PagedKvCache {
 public:
  PagedKvCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size, Device device = kCpu,
               DType dtype = DType::F32);
  // A cache over per-rank shards of equal num_blocks and block_size.
  explicit PagedKvCache(std::vector<PagedKvCache> shards);
  // Bytes one block takes over all layers (K and V).
  static size_t bytes_per_block(const ModelConfig& config, int64_t block_size, DType dtype = DType::F32);
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  // Layers of an unsharded cache (num_shards() == 0).
  Tensor& k(int64_t layer) { return k_.at(size_t(layer)); }  // [num_blocks, block_size, n_kv_heads, head_dim]
  Tensor& v(int64_t layer) { return v_.at(size_t(layer)); }  // [num_blocks, block_size, n_kv_heads, head_dim]
  const Tensor& k(int64_t layer) const { return k_.at(size_t(layer)); }
  const Tensor& v(int64_t layer) const { return v_.at(size_t(layer)); }
  int num_shards() const { return int(shards_.size()); }
  PagedKvCache& shard(int rank) { return shards_.at(size_t(rank)); }
  // Copies block src's K/V into block dst in every layer (copy-on-write).
  void copy_block(int64_t src, int64_t dst);

 private:
  int64_t num_blocks_, block_size_;
  std::vector<Tensor> k_, v_;
  std::vector<PagedKvCache> shards_;
};

class Model;

// One sequence's KV cache for Model::forward (single-sequence generation,
// perplexity): a paged cache of the model's own (its device and KV dtype)
// whose blocks the sequence holds in order.
class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t max_tokens);
  ~KvCache();
  KvCache(KvCache&&) noexcept;
  int64_t capacity() const { return capacity_; }
  int64_t size() const { return size_; }  // tokens stored
  void set_size(int64_t n);
  void clear() { size_ = 0; }
  static constexpr int64_t kBlockSize = 16;

 private:
  friend class Model;
  int64_t capacity_;
  int64_t size_ = 0;
  std::unique_ptr<PagedKvCache> paged_;  // made by the first forward
};

// One engine step: the new tokens of several sequences, concatenated
// sequence after sequence. Sequence s owns rows [query_start[s],
// query_start[s + 1]); they are its newest tokens, so its context after the
// step is context_lens[s] tokens.
struct BatchInput {
  std::vector<int32_t> tokens;        // [n_tokens]
  std::vector<int32_t> positions;     // [n_tokens]
  std::vector<int32_t> slot_mapping;  // [n_tokens] cache slot (block * block_size + offset) of each token's K/V
  std::vector<int32_t> query_start;   // [n_seqs + 1]
  std::vector<int32_t> context_lens;  // [n_seqs]
  std::vector<int32_t> block_tables;  // [n_seqs, max_blocks] row-major, -1 padded
  int32_t max_blocks = 0;
  std::vector<int32_t> logit_rows;  // [n_logits] rows whose logits forward_batch returns

  int64_t num_tokens() const { return int64_t(tokens.size()); }
  int64_t num_seqs() const { return int64_t(context_lens.size()); }
};

struct LoadOptions {
  Device device = kCpu;
  // fp8, int8, int4 or nf4: quantize an unquantized checkpoint's linears at
  // load (model/quantize_at_load.h); empty: run the checkpoint as it is.
  std::string quantization;
};

class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  virtual Device device() const = 0;                     // where the weights live
  virtual DType kv_dtype() const { return DType::F32; }  // of the paged KV cache it runs on
  // Bytes of weights read by one decode step, over all devices (for
  // bandwidth floors: each of tensor_parallel_size() devices reads its share).
  virtual size_t weight_bytes() const = 0;
  virtual int tensor_parallel_size() const { return 1; }
  // The paged cache this model runs on, and its bytes per block on each
  // device (tensor-parallel models shard the KV heads across ranks).
  virtual PagedKvCache create_kv_cache(int64_t num_blocks, int64_t block_size);
  virtual size_t kv_bytes_per_block(int64_t block_size) const;
  // Copies KV block src to dst in `cache` (copy-on-write); a multi-node model
  // has its other nodes copy theirs too.
  virtual void copy_kv_block(PagedKvCache& cache, int64_t src, int64_t dst) { cache.copy_block(src, dst); }

  // Runs tokens at positions [cache.size(), cache.size() + n) of one
  // sequence (through forward_batch), appends their K/V to the cache and
  // returns logits: [n, vocab] when all_logits, else [1, vocab] for the last
  // token. F32 on the CPU.
  Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits);

  // Runs one batch over the paged cache: writes each token's K/V to its
  // slot, attends through the block tables, and returns the logits of
  // batch.logit_rows: [n_logits, vocab] F32 on the CPU. Throws kite::Error
  // on an inconsistent batch.
  virtual Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) = 0;
  // forward_batch, then the most likely token of each logit row (lowest id
  // on ties). Models whose has_device_argmax() is true pick on the device
  // and move only the ids; the engine uses it for steps where every row is
  // plain greedy.
  virtual std::vector<int32_t> forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache);
  virtual bool has_device_argmax() const { return false; }
  // forward_batch, then one token per logit row as sample.rows say
  // (ops::sample_rows: bans, penalties, greedy or sampled, logprobs). The
  // default: plain-greedy steps of a has_device_argmax() model go through
  // forward_batch_argmax; else forward_batch and ops::sample_rows on the host
  // logits. A device model samples on the device and moves only the results.
  virtual std::vector<ops::SampledToken> forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                              ops::SampleBatch& sample);
  // Device memory a forward of up to max_batched_tokens tokens needs beyond
  // the weights and the KV cache (peak activations, measured), plus the
  // buffers prepare() will keep for max_num_seqs-sequence graphs. 0 on the CPU.
  virtual size_t activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) {
    (void)max_batched_tokens, (void)max_num_seqs;
    return 0;
  }
  // Called once by the engine with the cache it will run on: a device model
  // records its decode steps as graphs for batches of up to max_num_seqs
  // sequences (unless enforce_eager). Default: nothing to prepare.
  virtual void prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) {
    (void)cache, (void)max_num_seqs, (void)max_model_len, (void)enforce_eager;
  }

 protected:
  ModelConfig config_;
  std::string path_;
};

// Loads a Hugging Face model directory (config.json + safetensors) or a
// .gguf file. Throws kite::Error naming the file and field on bad input.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});

}  // namespace kite
