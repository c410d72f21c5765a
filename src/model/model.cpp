// The paged KV cache, the one-sequence KvCache over it, and Model's
// defaults.
#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/sampling.h"

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

KvCache::KvCache(const ModelConfig&, int64_t max_tokens) : capacity_(max_tokens) {
  if (max_tokens < 1) fail("kv cache", "max_tokens", "{} tokens; expected at least 1", max_tokens);
}
KvCache::~KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;

void KvCache::set_size(int64_t n) {
  KITE_CHECK(n >= 0 && n <= capacity_, "kv cache size {} of {}", n, capacity_);
  size_ = n;
}

Tensor Model::forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) {
  const int64_t n = int64_t(tokens.size()), start = cache.size();
  if (n == 0) throw Error("forward", "tokens", "no tokens to run");
  if (start + n > cache.capacity())
    fail("forward", "tokens", "{} tokens after {} cached exceed the KV cache capacity {} (raise the context size)", n,
         start, cache.capacity());
  const int64_t bs = KvCache::kBlockSize, blocks = (cache.capacity() + bs - 1) / bs;
  if (!cache.paged_) cache.paged_ = std::make_unique<PagedKvCache>(create_kv_cache(blocks, bs));
  BatchInput b;
  b.tokens.assign(tokens.begin(), tokens.end());
  for (int64_t i = 0; i < n; ++i) {
    b.positions.push_back(int32_t(start + i));
    b.slot_mapping.push_back(int32_t(start + i));  // block j holds positions [j bs, (j + 1) bs)
  }
  b.query_start = {0, int32_t(n)};
  b.context_lens = {int32_t(start + n)};
  b.max_blocks = int32_t(blocks);
  for (int64_t j = 0; j < blocks; ++j) b.block_tables.push_back(int32_t(j));
  for (int64_t i = all_logits ? 0 : n - 1; i < n; ++i) b.logit_rows.push_back(int32_t(i));
  Tensor logits = forward_batch(b, *cache.paged_);
  cache.set_size(start + n);
  return logits;
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
