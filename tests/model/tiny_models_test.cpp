// Tiny random-weight models of each supported architecture, made with HF
// transformers (scripts/fixtures/model_fixtures.py), against their float32
// reference logits and greedy continuations.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "fixtures.h"
#include "model/generation.h"

namespace kite {
namespace {

const std::string kDir = test::kModelFixtures;

class TinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModel, LogitsAndGreedyMatchTransformers) {
  const std::string dir = kDir + "/" + GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir + "/reference.json")) << dir;
  auto ref = nlohmann::json::parse(read_text_file(dir + "/reference.json"));
  auto model = load_model(dir);
  std::vector<int32_t> ids = ref["input_ids"].get<std::vector<int32_t>>();
  const int64_t vocab = model->config().vocab_size, n = int64_t(ids.size());
  KvCache cache(model->config(), n);
  Tensor logits = model->forward(ids, cache, true);  // [n, vocab]
  auto expected = ref["logits"].get<std::vector<std::vector<float>>>();
  ASSERT_EQ(int64_t(expected.size()), n);
  // Max relative error: max |ours - ref| / max |ref| over every logit.
  double max_err = 0, max_ref = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < vocab; ++j) {
      max_err =
          std::max(max_err, std::fabs(double(logits.data_as<float>()[i * vocab + j]) - expected[size_t(i)][size_t(j)]));
      max_ref = std::max(max_ref, std::fabs(double(expected[size_t(i)][size_t(j)])));
    }
  EXPECT_LE(max_err / max_ref, 1e-4) << "max abs error " << max_err << ", max |logit| " << max_ref;

  GenerateOptions opt;
  opt.max_tokens = 32;
  opt.context = n + 32;  // past max_position_embeddings for the dynamic-NTK model, as HF allows
  opt.sampling.temperature = 0;
  std::vector<int32_t> got;
  generate(*model, ids, opt, [&](int32_t t) {
    got.push_back(t);
    return true;
  });
  EXPECT_EQ(got, ref["greedy_new_ids"].get<std::vector<int32_t>>());
}

std::vector<std::string> fixture_names() { return test::model_fixture_names(); }

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyModel, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TinyModel);

TEST(TinyModelFixtures, EveryArchitectureIsCovered) {
  auto names = fixture_names();
  for (const char* want : {"llama", "llama3_rope", "mistral", "qwen2", "qwen3"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want << " fixture missing from " << kDir;
}

}  // namespace
}  // namespace kite
