// The engine's device-argmax path (Model::forward_batch_argmax), on the CPU
// through a model that claims to pick greedy tokens itself: the tokens equal
// the logits path's, and a step holding any non-greedy row takes the logits.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "engine/engine.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

// Forwards to the CPU model and counts which path the engine takes.
class CountingModel : public Model {
 public:
  explicit CountingModel(Model& inner) : inner_(inner) { config_ = inner.config(); }
  Device device() const override { return inner_.device(); }
  size_t weight_bytes() const override { return inner_.weight_bytes(); }
  Tensor forward_batch(const BatchInput& b, PagedKvCache& c) override {
    ++logits_calls;
    return inner_.forward_batch(b, c);
  }
  std::vector<int32_t> forward_batch_argmax(const BatchInput& b, PagedKvCache& c) override {
    ++argmax_calls;
    return inner_.forward_batch_argmax(b, c);  // the base: logits, then argmax on the host
  }
  bool has_device_argmax() const override { return true; }
  int logits_calls = 0, argmax_calls = 0;

 private:
  Model& inner_;
};

std::map<std::string, std::vector<int32_t>> run(Model& m, const nlohmann::json& greedy, bool sample_one) {
  EngineConfig c;
  c.num_blocks = 256;
  c.max_model_len = 1024;
  c.eos_ids = {2};
  Engine e(m, nullptr, c);
  int i = 0;
  for (const auto& g : greedy) {
    GenerationParams p;
    p.sampling.temperature = 0;
    p.max_tokens = 24;
    if (sample_one && i == 0) {
      p.sampling.temperature = 0.8f;
      p.sampling.seed = 5;
    }
    e.add_request("r" + std::to_string(i++), g["prompt_ids"].get<std::vector<int32_t>>(), p);
  }
  std::map<std::string, std::vector<int32_t>> out;
  while (e.has_work())
    for (RequestOutput& o : e.step())
      for (SampleOutput& s : o.samples) out[o.id].insert(out[o.id].end(), s.token_ids.begin(), s.token_ids.end());
  return out;
}

TEST(EngineArgmax, GreedyStepsTakeTheIdsPathWithTheSameTokens) {
  auto ref = nlohmann::json::parse(read_text_file(kModel + "/reference.json"));
  auto cpu = load_model(kModel);
  auto want = run(*cpu, ref["greedy"], false);
  CountingModel counting(*cpu);
  auto got = run(counting, ref["greedy"], false);
  EXPECT_EQ(got, want);
  EXPECT_GT(counting.argmax_calls, 0);
  EXPECT_EQ(counting.logits_calls, 0);
  int i = 0;
  for (const auto& g : ref["greedy"]) {
    std::vector<int32_t> first(g["new_ids"].begin(), g["new_ids"].begin() + 24);
    EXPECT_EQ(got["r" + std::to_string(i++)], first) << g["prompt"];
  }
}

TEST(EngineArgmax, ASampledRowSendsItsStepsToTheLogitsPath) {
  auto ref = nlohmann::json::parse(read_text_file(kModel + "/reference.json"));
  auto cpu = load_model(kModel);
  auto want = run(*cpu, ref["greedy"], true);
  CountingModel counting(*cpu);
  auto got = run(counting, ref["greedy"], true);
  EXPECT_EQ(got, want);  // the sampled request too: same seed, same tokens
  EXPECT_GT(counting.logits_calls, 0);
}

}  // namespace
}  // namespace kite
