// Tensor parallelism on the CPU: N ranks as threads with the local
// all-reduce give the logits of one rank (same weights, same F32 math up to
// summation order), KV heads and weights split, and bad splits are refused.
// (tests/engine/tensor_parallel_engine_test.cpp runs the engine over it.)
#include "model/tensor_parallel.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/mapped_file.h"

namespace kite {
namespace {

const std::string kFixtures = std::string(KITE_FIXTURES_DIR) + "/models/";
const std::string kRef = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

// Two sequences prefilling 5 and 3 tokens (blocks 0-1 and 2), then one
// decode token each: the paged path with a prefix already cached.
BatchInput prefill_batch(int64_t vocab) {
  BatchInput b;
  const std::vector<int32_t> a = {1, 5, 9, 13, 17}, c = {3, 7, 11};
  b.query_start = {0};
  b.max_blocks = 2;
  b.block_tables = {0, 1, 2, -1};
  for (size_t i = 0; i < a.size(); ++i) {
    b.tokens.push_back(int32_t(a[i] % vocab));
    b.positions.push_back(int32_t(i));
    b.slot_mapping.push_back(int32_t(i < 4 ? i : 4 + (i - 4)));  // block 0 then block 1 (block size 4)
  }
  b.query_start.push_back(5);
  for (size_t i = 0; i < c.size(); ++i) {
    b.tokens.push_back(int32_t(c[i] % vocab));
    b.positions.push_back(int32_t(i));
    b.slot_mapping.push_back(int32_t(2 * 4 + i));
  }
  b.query_start.push_back(8);
  b.context_lens = {5, 3};
  for (int32_t r = 0; r < 8; ++r) b.logit_rows.push_back(r);
  return b;
}

BatchInput decode_batch(int64_t vocab) {
  BatchInput b;
  b.tokens = {int32_t(21 % vocab), int32_t(23 % vocab)};
  b.positions = {5, 3};
  b.slot_mapping = {4 + 1, 2 * 4 + 3};
  b.query_start = {0, 1, 2};
  b.context_lens = {6, 4};
  b.max_blocks = 2;
  b.block_tables = {0, 1, 2, -1};
  b.logit_rows = {0, 1};
  return b;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const float* g = got.data_as<const float>();
  const float* w = want.data_as<const float>();
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(g[i] - w[i])));
    max_ref = std::max(max_ref, double(std::fabs(w[i])));
  }
  // F32 activations: only the order of the ranks' partial sums differs.
  EXPECT_LE(max_diff, 1e-4 * std::max(1.0, max_ref)) << what << ": max |diff| " << max_diff << " of " << max_ref;
}

void check_same_logits(const std::string& path, int ranks) {
  SCOPED_TRACE(path + " over " + std::to_string(ranks) + " ranks");
  auto src = load_decoder_model(path, "tensor-parallel");
  ASSERT_TRUE(src);
  const int64_t vocab = src->config().vocab_size;
  DecoderModel& one = *src;
  TensorParallelModel tp(src->checkpoint(), std::vector<Device>(size_t(ranks), kCpu), make_local_communicators(ranks));
  EXPECT_EQ(tp.tensor_parallel_size(), ranks);
  const int64_t local_kv = std::max<int64_t>(1, src->config().num_kv_heads / ranks);  // replicated beyond n_kv ranks
  EXPECT_EQ(tp.kv_bytes_per_block(4) * size_t(src->config().num_kv_heads),
            one.kv_bytes_per_block(4) * size_t(local_kv));
  PagedKvCache c1 = one.create_kv_cache(4, 4), cn = tp.create_kv_cache(4, 4);
  ASSERT_EQ(cn.num_shards(), ranks);
  EXPECT_EQ(cn.shard(0).k(0).dim(2), local_kv);
  const BatchInput pre = prefill_batch(vocab), dec = decode_batch(vocab);
  expect_close(tp.forward_batch(pre, cn), one.forward_batch(pre, c1), "prefill");
  // Decode reads the K/V each rank wrote for its own heads. (Running a step
  // twice rewrites the same slots with the same values.)
  EXPECT_EQ(tp.forward_batch_argmax(dec, cn), one.forward_batch_argmax(dec, c1));
  expect_close(tp.forward_batch(dec, cn), one.forward_batch(dec, c1), "decode");
}

TEST(TensorParallel, SameLogitsAsOneRankLlama) { check_same_logits(kFixtures + "llama", 2); }
TEST(TensorParallel, SameLogitsAsOneRankQkvBiasTiedEmbeddings) { check_same_logits(kFixtures + "qwen2", 2); }
TEST(TensorParallel, SameLogitsAsOneRankKiteRef) { check_same_logits(kRef, 2); }
// 4 ranks over 2 KV heads: each KV head (and its cache) lives on 2 ranks.
TEST(TensorParallel, SameLogitsWithReplicatedKvHeads) {
  check_same_logits(kFixtures + "llama", 4);
  check_same_logits(kFixtures + "qwen2", 4);
}

TEST(TensorParallel, SameLogitsOnceKvHeadsAreOnePerRank) {
  // llama fixture: 4 heads, 2 KV heads: 2 ranks hold one KV head each.
  auto src = load_decoder_model(kFixtures + "llama", "tensor-parallel");
  ASSERT_TRUE(src);
  DecoderModel& one = *src;
  TensorParallelModel tp(src->checkpoint(), {kCpu, kCpu}, make_local_communicators(2));
  EXPECT_EQ(tp.rank(1).shard_config().num_kv_heads, 1);
  EXPECT_EQ(tp.rank(1).shard_config().num_heads, 2);
  EXPECT_EQ(tp.rank(1).shard_config().intermediate_size, 64);
  // Each rank holds about half of the layer weights.
  EXPECT_LT(tp.rank(0).weight_bytes(), one.weight_bytes());
}

TEST(TensorParallel, RefusesSplitsThatDoNotDivide) {
  auto src = load_decoder_model(kRef, "tensor-parallel");  // 6 heads, 2 KV heads, ffn 1024
  ASSERT_TRUE(src);
  try {
    TensorParallelModel tp(src->checkpoint(), {kCpu, kCpu, kCpu}, make_local_communicators(3));
    FAIL() << "3 ranks cannot split an MLP of 1024";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("intermediate_size"), std::string::npos) << e.what();
  }
  try {
    TensorParallelModel tp(src->checkpoint(), std::vector<Device>(4, kCpu), make_local_communicators(4));
    FAIL() << "4 ranks cannot split 6 query heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_model_parallel(kRef, kCpu, 0), Error);
}

}  // namespace
}  // namespace kite
