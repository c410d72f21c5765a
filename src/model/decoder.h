#pragma once
// The decoder-only transformer shared by the Llama family (Llama 2/3,
// Mistral, Qwen2, Qwen3): pre-norm blocks of grouped-query self-attention
// with RoPE and a SwiGLU MLP. Architecture files (model/arch_*.cpp) say which
// optional parts a family has and where its weights are found.
#include <functional>
#include <string>
#include <vector>

#include "core/quant_weight.h"
#include "model/model.h"
#include "model/rope.h"

namespace kite {

// Linear weights are QuantWeights: dense or in one of Kite's quantized layouts.
struct AttentionWeights {
  QuantWeight wq, wk, wv, wo;  // [n_heads*hd, d], [n_kv*hd, d], [n_kv*hd, d], [d, n_heads*hd]
  Tensor bq, bk, bv;           // optional biases (Qwen2)
  Tensor q_norm, k_norm;       // optional per-head RMSNorm weights [hd] (Qwen3)
};

struct MlpWeights {
  QuantWeight gate, up;  // [ffn, d]
  QuantWeight down;      // [d, ffn]
};

struct LayerWeights {
  Tensor attn_norm;  // [d]
  AttentionWeights attn;
  Tensor mlp_norm;  // [d]
  MlpWeights mlp;
};

struct DecoderWeights {
  Tensor embed;  // [vocab, d]
  std::vector<LayerWeights> layers;
  Tensor final_norm;    // [d]
  QuantWeight lm_head;  // [vocab, d] (a view of embed when tied)
};

// The module names of a layer's linears, in Hugging Face spelling.
inline constexpr const char* kLinearNames[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                               "mlp.down_proj"};
// The linear of `layer` called `name` (one of kLinearNames).
QuantWeight& layer_linear(LayerWeights& layer, std::string_view name);
const QuantWeight& layer_linear(const LayerWeights& layer, std::string_view name);

// Sees the input of every linear (and the K/V written to the cache) while a
// layer runs: calibration for quantization. name is one of kLinearNames,
// or "k_cache" / "v_cache" with the rotated keys / values [n, n_kv*hd].
using LayerObserver = std::function<void(std::string_view name, const Tensor& input /*[n, in] F32*/)>;

// Which optional parts an architecture has.
struct ArchTraits {
  bool qkv_bias = false;
  bool qk_norm = false;
};

// Looks up a weight by its Hugging Face name, checking its shape; throws
// kite::Error naming the file and tensor when it is missing or mis-shaped.
using WeightLookup = std::function<Tensor(const std::string& name, const Shape& expected)>;
using WeightExists = std::function<bool(const std::string& name)>;
// Loads the linear `module` ("model.layers.3.mlp.up_proj", "lm_head") of
// logical shape [out, in], dense or quantized.
using LinearLookup = std::function<QuantWeight(const std::string& module, int64_t out, int64_t in)>;

DecoderWeights load_decoder_weights(const ModelConfig& config, const ArchTraits& traits, const WeightLookup& get,
                                    const WeightExists& has, const LinearLookup& get_linear = {});

class DecoderModel : public Model {
 public:
  // rope_freq_factors: per-frequency divisors of inv_freq ([rotary_dim / 2]),
  // how GGUF files store Llama 3 RoPE scaling (tensor rope_freqs.weight);
  // empty when the config's rope type says it all.
  DecoderModel(ModelConfig config, std::string path, DecoderWeights weights, std::vector<std::shared_ptr<void>> keep,
               std::vector<float> rope_freq_factors = {});
  size_t weight_bytes() const override;
  Device device() const override { return w_.embed.device(); }
  Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) override;
  Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) override;

  // Layer by layer, for calibration: the embeddings of `tokens` ([n, d]),
  // and layer `l` run in place over one whole sequence x ([n, d], positions
  // 0..n-1, no cache), reporting each linear's input to `observer`.
  Tensor embed(std::span<const int32_t> tokens);
  void run_layer(int64_t l, Tensor& x, const LayerObserver& observer);
  // The weights, to be replaced by quantized ones (same shapes).
  DecoderWeights& weights() { return w_; }
  const DecoderWeights& weights() const { return w_; }

 private:
  // What differs between the contiguous and the paged forward: RoPE on the
  // new q/k, storing k/v, and attention over the cache.
  // q: [n, n_heads, hd], k, v: [n, n_kv, hd], out: [n, n_heads, hd].
  using Attend = std::function<void(int64_t layer, Tensor q, Tensor k, Tensor v, Tensor& out)>;
  // The layers over `tokens`; returns the logits of `logit_rows` ([m, vocab] F32 on the CPU).
  Tensor run(std::span<const int32_t> tokens, std::span<const int32_t> logit_rows, const Attend& attend);
  void check_tokens(std::span<const int32_t> tokens, const char* source) const;
  void attention_block(const LayerWeights& w, int64_t layer, const Tensor& x /*[n, d]*/, const Attend& attend,
                       Tensor& out /*[n, d]*/, const LayerObserver* observer);
  void mlp_block(const MlpWeights& w, const Tensor& x /*[n, d]*/, Tensor& out /*[n, d]*/,
                 const LayerObserver* observer);
  void layer(int64_t l, Tensor& x, Tensor& h, Tensor& y, const Attend& attend, const LayerObserver* observer);

  DecoderWeights w_;
  std::vector<std::shared_ptr<void>> keep_;  // mapped files backing the weights
  RopeFrequencies rope_for(int64_t seq_len) const;

  std::vector<float> rope_freq_factors_;
  RopeFrequencies static_rope_;
};

// load_model for a checkpoint that must be a DecoderModel (what the device
// and tensor-parallel paths build from); kite::Error naming `purpose` else.
std::unique_ptr<DecoderModel> load_decoder_model(const std::string& path, const std::string& purpose);

}  // namespace kite
