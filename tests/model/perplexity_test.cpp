// kite ppl's scoring methods on the real model: the shared/README windows,
// HF's sliding window (--stride), llama-perplexity's second half
// (--score-second-half), and KL divergence against a base model.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/generation.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

struct Fixture {
  std::unique_ptr<Model> model = load_model(kModel);
  std::vector<int32_t> ids;
  Fixture() {
    auto tok = Tokenizer::load(kModel);
    ids = tok->encode(read_text_file(std::string(KITE_SHARED_DIR) + "/text/valid/jargon.txt"), true);
    ids.resize(700);  // short: two windows of 512, or several strided ones
  }
};

Fixture& fx() {
  static Fixture f;
  return f;
}

TEST(Perplexity, StrideEqualToCtxIsTheNonOverlappingMethod) {
  PerplexityResult a = perplexity(*fx().model, fx().ids, 256);
  PerplexityOptions o;
  o.ctx = 256;
  o.stride = 256;
  PerplexityResult b = perplexity(*fx().model, fx().ids, o);
  EXPECT_EQ(a.tokens_scored, 700 - 3);  // windows of 256, 256, 188: all but their first tokens
  EXPECT_EQ(b.tokens_scored, a.tokens_scored);
  EXPECT_DOUBLE_EQ(b.nll_sum, a.nll_sum);
}

TEST(Perplexity, SlidingWindowScoresEveryTokenOnceWithMoreContext) {
  PerplexityOptions o;
  o.ctx = 256;
  o.stride = 64;
  PerplexityResult r = perplexity(*fx().model, fx().ids, o);
  EXPECT_EQ(r.tokens_scored, 700 - 1);  // every token but the first, once
  // More context per scored token than non-overlapping windows: lower ppl.
  EXPECT_LT(r.ppl(), perplexity(*fx().model, fx().ids, 256).ppl());
}

TEST(Perplexity, SecondHalfScoringAsLlamaPerplexity) {
  PerplexityOptions o;
  o.ctx = 128;
  o.score_second_half = true;
  PerplexityResult r = perplexity(*fx().model, fx().ids, o);
  EXPECT_EQ(r.tokens_scored, (700 / 128) * (128 - 1 - 64));  // 5 whole windows, 63 scored each
  EXPECT_GT(r.ppl(), 1.0);
  o.ctx = 1024;
  EXPECT_THROW(perplexity(*fx().model, fx().ids, o), Error);  // not one whole window
}

TEST(Perplexity, KlAgainstItselfIsZeroAndCountsEveryPosition) {
  PerplexityOptions o;
  o.ctx = 256;
  o.kl_base = fx().model.get();
  PerplexityResult r = perplexity(*fx().model, fx().ids, o);
  ASSERT_EQ(int64_t(r.kl.size()), r.tokens_scored);
  EXPECT_NEAR(r.mean_kl(), 0.0, 1e-9);
  EXPECT_EQ(r.same_top, r.tokens_scored);
  EXPECT_DOUBLE_EQ(r.base_ppl(), r.ppl());
}

TEST(Perplexity, BadOptionsAreRejected) {
  PerplexityOptions o;
  o.ctx = 256;
  o.stride = 300;
  EXPECT_THROW(perplexity(*fx().model, fx().ids, o), Error);
  o.stride = 64;
  o.score_second_half = true;
  EXPECT_THROW(perplexity(*fx().model, fx().ids, o), Error);
}

}  // namespace
}  // namespace kite
