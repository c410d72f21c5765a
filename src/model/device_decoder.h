#pragma once
// The decoder of model/decoder.h laid out for an accelerator's serving path:
// BF16 weights and activations (F32 accumulation inside the kernels), the
// Q/K/V projections fused into one GEMM and gate/up into another, the
// residual add fused into the next RMSNorm, RoPE fused with the KV-cache
// write, BF16 paged KV cache. Built from a loaded CPU DecoderModel; runs
// only forward_batch (the engine's path). On the CPU it runs the same code
// with F32 activations and KV cache (BF16 weights): how tensor parallelism
// is tested without GPUs.
//
// Tensor parallelism (Megatron-style): rank r of N holds attention heads
// [r nh/N, (r+1) nh/N) and KV heads likewise (Q/K/V and gate/up split by
// output rows, "column-parallel"), the matching input columns of the output
// and down projections ("row-parallel": each rank's partial sums are
// all-reduced), its KV heads' cache, and a vocabulary shard of the
// embedding (looked up, then all-reduced) and of lm_head (logits
// all-gathered). Every rank runs the same batch.
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "backend/ops/paged_attention.h"
#include "model/decoder.h"

namespace kite {

struct DeviceLayerWeights {
  Tensor attn_norm, mlp_norm;  // [d] BF16
  Tensor wqkv;                 // [(n_heads + 2 n_kv) * hd, d] BF16: q rows, then k, then v
  Tensor bqkv;                 // [(n_heads + 2 n_kv) * hd] BF16 or undefined
  Tensor wo;                   // [d, n_heads * hd]
  Tensor w_gate_up;            // [2 ffn, d]: gate rows, then up
  Tensor w_down;               // [d, ffn]
};

// Which shard a DeviceDecoderModel holds (size 1: the whole model).
struct TensorParallelRank {
  int rank = 0, size = 1;
  Communicator* comm = nullptr;  // joins the ranks when size > 1 (not owned)
};

class DeviceDecoderModel : public Model {
 public:
  // Copies (and converts) rank tp.rank's shard of the weights of `src` to
  // `device` as BF16. Throws kite::Error for what the device path does not
  // run yet (quantized weights, per-head q/k norms, dynamic RoPE) and for
  // head or MLP counts the ranks cannot split evenly.
  DeviceDecoderModel(const DecoderModel& src, Device device, TensorParallelRank tp = {});
  // This rank's weight bytes (the whole model's when size is 1).
  size_t weight_bytes() const override { return weight_bytes_; }
  Device device() const override { return device_; }
  DType kv_dtype() const override { return act_; }
  // The shapes this rank runs: num_heads, num_kv_heads and
  // intermediate_size divided by the ranks (its KV cache's config).
  const ModelConfig& shard_config() const { return local_; }
  PagedKvCache create_kv_cache(int64_t num_blocks, int64_t block_size) override;
  size_t kv_bytes_per_block(int64_t block_size) const override;
  // Not on the device path: kite ppl and the contiguous cache run on the CPU.
  Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) override;
  Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) override;
  // The greedy token of each logit row, computed on the device (only the ids
  // travel back).
  std::vector<int32_t> forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) override;
  bool has_device_argmax() const override { return true; }
  // Samples on the device (ops::sample_rows on the step's logits; plain-greedy
  // steps take the ids the forward's argmax already computed).
  std::vector<ops::SampledToken> forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                      ops::SampleBatch& sample) override;
  // Records decode steps (one token per sequence) as device graphs for the
  // padded batch sizes up to max_num_seqs, on `cache`.
  void prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) override;
  size_t activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) override;
  // Graphs recorded (for tests and start-up logs); their work buffers' bytes.
  size_t num_graphs() const { return graphs_.size(); }
  // Device time of one decode step of `batch` sequences: the step's graph
  // replayed back to back (inputs of the last step), ms per replay; 0 when
  // no graph fits. With a step's wall time it gives the GPU-busy fraction.
  double graph_step_ms(int64_t batch, int reps);
  size_t graph_memory_bytes() const { return graph_bytes_; }

  // The activations of one forward over n tokens with m logit rows.
  struct Work {
    Tensor residual, h, y;          // [n, d]
    Tensor qkv;                     // [n, (nh + 2 nkv) hd]
    Tensor q, attn;                 // [n, nh, hd]
    Tensor gate_up;                 // [n, 2 ffn]
    Tensor act;                     // [n, ffn]
    Tensor last_y, last_r, normed;  // [m, d]
    Tensor logits;                  // [m, vocab] F32
    Tensor ids;                     // [m] I32
    Tensor shard_logits;            // [m, vocab_shard] F32 (tensor parallel)
    Tensor gathered;                // [ranks, m, vocab_shard] F32 (tensor parallel)
  };
  // The index arrays of a batch on the device.
  struct Indices {
    Tensor tokens, positions, slots, query_start, context_lens, block_tables, rows;
  };

 private:
  Work allocate_work(int64_t n, int64_t m) const;
  Work work_prefix(const Work& w, int64_t n, int64_t m) const;
  // Every op of the forward over preallocated buffers (no allocation, no
  // host copy under ops::TrustedIndices: safe to record as a graph).
  void run(const Indices& ix, int64_t n, int64_t m, const ops::PagedAttentionHints& hints, Work& w,
           PagedKvCache& cache);
  // Eager forward: uploads the indices, allocates, runs. Returns the work
  // (logits and ids of the logit rows are in it).
  Work forward_eager(const BatchInput& b, PagedKvCache& cache);
  // The graph path for a decode step: false when the batch does not fit
  // one; else fills graph_work_'s first *rows rows.
  bool forward_graph(const BatchInput& b, PagedKvCache& cache, int64_t* rows);
  // The smallest recorded batch size >= n (an index into graphs_).
  size_t graph_for(int64_t n) const;
  // Writes a decode batch (or, for null, padding only) into graph_in_,
  // padded to `padded` rows.
  void upload_graph_inputs(const BatchInput* b, int64_t padded);
  void check_batch(const BatchInput& b, const PagedKvCache& cache) const;

  // Tensor parallelism: y = the sum of every rank's y (no-op for one rank).
  void all_reduce(Tensor& y);

  Device device_;
  TensorParallelRank tp_;
  ModelConfig local_;        // this rank's head and MLP counts
  DType act_ = DType::BF16;  // activations and KV cache: BF16 on devices, F32 on the CPU
  int64_t vocab_shard_ = 0;  // rows of embed_/lm_head_ per rank (the last rank's padded with zeros)
  size_t weight_bytes_ = 0;
  Tensor embed_;       // [vocab_shard, d] BF16
  Tensor final_norm_;  // [d] BF16
  Tensor lm_head_;     // [vocab_shard, d] BF16 (the embedding when tied)
  std::vector<DeviceLayerWeights> layers_;
  Tensor inv_freq_;  // [rotary_dim / 2] F32 on the device
  float attention_factor_ = 1.0f;

  // Decode graphs: one per padded batch size, sharing one set of buffers.
  std::vector<int64_t> graph_sizes_;
  std::vector<DeviceGraph> graphs_;
  const void* graph_cache_ = nullptr;  // the cache the graphs write (k(0)'s data)
  int64_t graph_max_blocks_ = 0;       // block-table width of the graphs
  Work graph_work_;
  Tensor graph_in_;  // [inputs] I32 on the device
  Indices graph_ix_;
  size_t graph_bytes_ = 0;
};

// Loads `path` on the CPU, then moves it to `device` as a DeviceDecoderModel
// (or returns the CPU model for a CPU device).
std::unique_ptr<Model> load_model_on(const std::string& path, Device device);

}  // namespace kite
