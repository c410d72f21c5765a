#pragma once
// The runner of a decoder-only model: runs an architecture's definition
// (model/arch/arch.h) over the paged KV cache on one device, or as one
// tensor-parallel rank's shard.
//
// On the CPU it runs eagerly with F32 activations and KV cache (weights as
// the checkpoint stores them, quantized ones through the CPU's quantized
// kernel): what tests, calibration and `kite ppl` use. On CUDA it runs BF16
// activations and KV cache, and `prepare` records decode steps (one token
// per sequence) as CUDA graphs for padded batch sizes. Both execute the
// same Architecture::forward_layer over the same fused ops: Q/K/V and
// gate/up as one Linear each, the residual add fused into the next RMSNorm,
// RoPE (and q/k norms) fused with the KV-cache write.
//
// Tensor parallelism (Megatron-style): rank r of N holds query heads
// [r nh/N, (r+1) nh/N) and its KV heads (replicated when the ranks
// outnumber them), the matching MLP columns, the input columns of the
// row-parallel linears (their outputs all-reduced), its KV heads' cache, and
// a vocabulary shard of the embedding (looked up, then all-reduced) and of
// lm_head (logits all-gathered). Every rank runs the same batch.
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "backend/ops/paged_attention.h"
#include "model/arch/arch.h"
#include "model/model.h"
#include "model/rope.h"
#include "model/weights.h"

namespace kite {

// Sees the input of every linear module (and the K/V written to the cache)
// while a layer runs: calibration for quantization. name is a module of the
// layer ("self_attn.q_proj", ...; layer_linear_modules), or "k_cache" /
// "v_cache" with the rotated keys / values [n, n_kv * head_dim].
using LayerObserver = std::function<void(std::string_view name, const Tensor& input /*[n, in] F32*/)>;

// Which shard a DecoderModel holds (size 1: the whole model).
struct TensorParallelRank {
  int rank = 0, size = 1;
  Communicator* comm = nullptr;  // joins the ranks when size > 1 (not owned)
};

// A checkpoint read on the host: its config and weights, not yet on a device.
struct LoadedCheckpoint {
  ModelConfig config;
  std::string path;
  std::shared_ptr<ModelWeights> weights;
};
class DecoderModel : public Model {
 public:
  // Builds rank tp.rank's shard of `weights` on `device` (CPU: tensors
  // used where they lie; CUDA: packed by each Linear's kernel). Throws
  // kite::Error for a weight no kernel of the device runs (naming the
  // tensor, scheme and device) and for head or MLP counts the ranks cannot
  // split evenly.
  DecoderModel(ModelConfig config, std::string path, std::shared_ptr<ModelWeights> weights, Device device = kCpu,
               TensorParallelRank tp = {});
  ~DecoderModel() override;

  Device device() const override { return device_; }
  DType kv_dtype() const override { return act_; }
  size_t weight_bytes() const override;
  const Architecture& architecture() const { return *arch_; }
  // The shapes this rank runs: heads, KV heads and MLP width divided by the ranks.
  const ModelConfig& shard_config() const { return local_; }
  PagedKvCache create_kv_cache(int64_t num_blocks, int64_t block_size) override;
  size_t kv_bytes_per_block(int64_t block_size) const override;

  Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) override;
  std::vector<int32_t> forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) override;
  bool has_device_argmax() const override { return true; }
  std::vector<ops::SampledToken> forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                      ops::SampleBatch& sample) override;
  // Records decode steps as device graphs for the padded batch sizes up to
  // max_num_seqs, on `cache` (CUDA only; nothing on the CPU).
  void prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) override;
  size_t activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) override;
  size_t num_graphs() const { return graphs_.size(); }
  // Device time of one decode step of `batch` sequences, its graph replayed
  // `reps` times back to back (ms per replay); 0 when no graph fits.
  double graph_step_ms(int64_t batch, int reps);
  size_t graph_memory_bytes() const { return graph_bytes_; }
  // The kernel each linear slot of layer 0 and the lm_head run ("qkv:
  // cuda_bf16_cublaslt", ...), for start-up lines and tests.
  std::vector<std::string> kernel_summary() const;

  // Calibration (quantization), layer by layer on one whole sequence
  // (positions 0..n-1, no cache kept): the embeddings of `tokens` ([n, d]
  // in the activation dtype), and layer l run in place over x, reporting
  // each linear module's input to `observer`.
  Tensor embed(std::span<const int32_t> tokens);
  void run_layer(int64_t l, Tensor& x, const LayerObserver& observer);
  // The logical weights; after changing a layer's (or the lm_head's), call
  // rebuild_layer(l) (rebuild_lm_head()) so its Linears use them.
  ModelWeights& weights() { return *weights_; }
  std::shared_ptr<ModelWeights> shared_weights() const { return weights_; }
  // This model's config, path and (shared) weights, to build other runners
  // from (tensor-parallel ranks, another device).
  LoadedCheckpoint checkpoint() const { return {config_, path_, weights_}; }
  const ModelWeights& weights() const { return *weights_; }
  void rebuild_layer(int64_t l);
  void rebuild_lm_head();

  // The activations of one forward over n tokens with m logit rows.
  struct Work {
    Tensor residual, h, y;          // [n, d]
    std::vector<Tensor> buffers;    // the architecture's: [n, cols_i]
    Tensor q;                       // [n, n_heads, hd] rotated queries
    Tensor last_y, last_r, normed;  // [m, d]
    Tensor logits;                  // [m, vocab] F32
    Tensor ids;                     // [m] I32
    Tensor shard_logits;            // [m, vocab_shard] F32 (tensor parallel)
    Tensor gathered;                // [ranks, m, vocab_shard] F32 (tensor parallel)
    Tensor rope_freqs;              // [n, rotary / 2] F32 per-token frequencies (dynamic RoPE), else undefined
    std::vector<const Tensor*> all() const;
  };
  // The index arrays of a batch on the device.
  struct Indices {
    Tensor tokens, positions, slots, query_start, context_lens, block_tables, rows;
  };

 private:
  class RunnerStep;
  void build_layer(int64_t l);
  void build_globals();
  Work allocate_work(int64_t n, int64_t m) const;
  Work work_prefix(const Work& w, int64_t n, int64_t m) const;
  // Every op of the forward over preallocated buffers (graph-safe under
  // ops::TrustedIndices). kv: per layer, the K and V cache tensors.
  void run(const Indices& ix, int64_t n, int64_t m, const ops::PagedAttentionHints& hints, Work& w,
           PagedKvCache& cache);
  Work forward_eager(const BatchInput& b, PagedKvCache& cache);
  bool forward_graph(const BatchInput& b, PagedKvCache& cache, int64_t* rows);
  size_t graph_for(int64_t n) const;
  void upload_graph_inputs(const BatchInput* b, int64_t padded);
  void check_batch(const BatchInput& b, const PagedKvCache& cache) const;
  void check_tokens(std::span<const int32_t> tokens, const char* source) const;
  // Per-token RoPE frequencies of a batch (dynamic NTK), [n, rotary / 2] F32 on the device.
  Tensor dynamic_rope_freqs(const BatchInput& b) const;
  void all_reduce(Tensor& y);
  // The last layer's logit rows through the final norm and lm_head; their argmax.
  void logits_into(const Indices& ix, Work& w);

  std::shared_ptr<ModelWeights> weights_;
  const Architecture* arch_ = nullptr;
  Device device_;
  TensorParallelRank tp_;
  ModelConfig local_;        // this rank's head and MLP counts
  DType act_ = DType::F32;   // activations and KV cache: F32 on the CPU, BF16 on CUDA
  int64_t vocab_shard_ = 0;  // rows of embed_/lm_head_ per rank (the last rank's padded with zeros)
  LayerSpec spec_;           // the architecture's layer spec (global weights, local buffers)
  std::vector<std::vector<std::string>> slot_modules_;  // per linear slot, its modules (observers)
  Tensor embed_;                                        // [vocab_shard, d] on the device
  Tensor final_norm_;                                   // [d]
  Linear lm_head_;                                      // [vocab_shard, d]
  std::vector<Layer> layers_;
  std::vector<size_t> layer_bytes_;
  Tensor inv_freq_;  // [rotary / 2] F32 on the device (static RoPE)
  float attention_factor_ = 1.0f;
  bool dynamic_rope_ = false;

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

// Reads a Hugging Face model directory or a .gguf file (model/loader.cpp).
// quantization: see LoadOptions (empty: as stored).
LoadedCheckpoint load_checkpoint(const std::string& path, const std::string& quantization = "");

// Builds the DecoderModel of `path` on `device` (loading the weights on
// the host first).
std::unique_ptr<Model> load_model_on(const std::string& path, Device device, const std::string& quantization = "");
// load_model for a checkpoint that must be a DecoderModel (what the
// calibration and tensor-parallel paths build from); kite::Error naming
// `purpose` else.
std::unique_ptr<DecoderModel> load_decoder_model(const std::string& path, const std::string& purpose);

}  // namespace kite
