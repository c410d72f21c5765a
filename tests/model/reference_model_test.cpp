// Golden outputs of the real trained model (shared/models/kite-ref) against
// HF transformers' float32 reference.json.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "model/generation.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

nlohmann::json reference() { return nlohmann::json::parse(read_text_file(kModel + "/reference.json")); }

Model& shared_model() {
  static std::unique_ptr<Model> m = load_model(kModel);
  return *m;
}

TEST(ReferenceModel, ConfigAndWeights) {
  const ModelConfig& c = shared_model().config();
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);
  // 15,735,168 parameters in BF16; a decode step reads all but 8191 embedding rows.
  EXPECT_EQ(shared_model().weight_bytes(), size_t(15735168 - 8191 * 384) * 2 + 8192 * 384 * 2);
}

TEST(ReferenceModel, GreedySequencesMatchExactly) {
  auto ref = reference();
  ASSERT_FALSE(ref["greedy"].empty());
  for (const auto& g : ref["greedy"]) {
    std::vector<int32_t> prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> expected = g["new_ids"].get<std::vector<int32_t>>();
    GenerateOptions opt;
    opt.max_tokens = 48;
    opt.sampling.temperature = 0;
    opt.stop_ids = {2};
    std::vector<int32_t> got;
    generate(shared_model(), prompt, opt, [&](int32_t t) {
      got.push_back(t);
      return true;
    });
    EXPECT_EQ(got, expected) << "prompt: " << g["prompt"].get<std::string>();
  }
}

TEST(ReferenceModel, LogitsMatchReference) {
  auto ref = reference();
  ASSERT_FALSE(ref["logits"].empty());
  const int64_t vocab = shared_model().config().vocab_size;
  for (const auto& e : ref["logits"]) {
    std::vector<int32_t> ids = e["prompt_ids"].get<std::vector<int32_t>>();
    KvCache cache(shared_model().config(), int64_t(ids.size()));
    Tensor logits = shared_model().forward(ids, cache, true);  // [n, vocab]
    const float* lp = logits.data_as<float>();
    const int64_t n = int64_t(ids.size());
    std::vector<int32_t> argmaxes;
    for (int64_t i = 0; i < n; ++i) argmaxes.push_back(argmax(std::span<const float>(lp + i * vocab, size_t(vocab))));
    EXPECT_EQ(argmaxes, e["all_positions_argmax"].get<std::vector<int32_t>>());
    std::span<const float> last(lp + (n - 1) * vocab, size_t(vocab));
    EXPECT_NEAR(log_sum_exp(last), e["last_logsumexp"].get<double>(), 2e-4);
    auto top_ids = e["last_top10_ids"].get<std::vector<int32_t>>();
    auto top_logits = e["last_top10_logits"].get<std::vector<double>>();
    for (size_t j = 0; j < top_ids.size(); ++j)
      EXPECT_NEAR(last[size_t(top_ids[j])], top_logits[j], 2e-4) << "token " << top_ids[j];
  }
}

TEST(ReferenceModel, PerplexityMatchesReference) {
  auto ref = reference();
  auto tok = Tokenizer::load(kModel);
  for (const char* name : {"valid/shakespeare.txt", "valid/jargon.txt"}) {
    auto ids = tok->encode(read_text_file(std::string(KITE_SHARED_DIR) + "/text/" + name), true);
    PerplexityResult r = perplexity(shared_model(), ids, 512);
    const auto& e = ref["ppl"][name];
    EXPECT_EQ(r.tokens_scored, e["tokens_scored"].get<int64_t>()) << name;
    EXPECT_NEAR(r.ppl(), e["ppl"].get<double>(), e["ppl"].get<double>() * 0.001) << name;
  }
}

}  // namespace
}  // namespace kite
