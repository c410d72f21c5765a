#pragma once
// A loaded causal language model: config, weights on a device, and a
// forward pass over one sequence's new tokens with its KV cache.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "formats/hf_config.h"

namespace kite {

// Contiguous per-sequence KV cache (the paged cache belongs to the engine).
class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t max_tokens, Device device = kCpu);
  int64_t capacity() const { return capacity_; }
  int64_t size() const { return size_; }  // tokens stored
  void set_size(int64_t n);
  void clear() { size_ = 0; }
  Tensor& k(int64_t layer) { return k_[size_t(layer)]; }  // [capacity, n_kv_heads, head_dim]
  Tensor& v(int64_t layer) { return v_[size_t(layer)]; }  // [capacity, n_kv_heads, head_dim]

 private:
  int64_t capacity_;
  int64_t size_ = 0;
  std::vector<Tensor> k_, v_;
};

struct LoadOptions {
  Device device = kCpu;
};

class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  // Bytes of weights read by one decode step (for bandwidth floors).
  virtual size_t weight_bytes() const = 0;

  // Runs tokens at positions [cache.size(), cache.size() + n), appends their
  // K/V to the cache and returns logits: [n, vocab] when all_logits, else
  // [1, vocab] for the last token. F32 on the CPU.
  virtual Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) = 0;

 protected:
  ModelConfig config_;
  std::string path_;
};

// Loads a Hugging Face model directory (config.json + safetensors) or a
// .gguf file. Throws kite::Error naming the file and field on bad input.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});

}  // namespace kite
