// The engine's device sampling (DecoderModel::forward_batch_sample, the
// CUDA ops::sample_rows) against host sampling of the same device logits (the
// Model default: logits to the host, the CPU op) on the real model: seeded
// sampled requests with top-k / top-p / min-p, penalties, min_tokens, logprobs,
// prompt logprobs and n > 1 give the same tokens. Skipped without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/mapped_file.h"
#include "engine/engine.h"
#include "model/decoder.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

// The device model with the host sampler of Model's default.
class HostSampled : public Model {
 public:
  explicit HostSampled(Model& inner) : inner_(inner) { config_ = inner.config(); }
  Device device() const override { return inner_.device(); }
  DType kv_dtype() const override { return inner_.kv_dtype(); }
  size_t weight_bytes() const override { return inner_.weight_bytes(); }
  Tensor forward_batch(const BatchInput& b, PagedKvCache& c) override { return inner_.forward_batch(b, c); }
  std::vector<int32_t> forward_batch_argmax(const BatchInput& b, PagedKvCache& c) override {
    return inner_.forward_batch_argmax(b, c);
  }
  bool has_device_argmax() const override { return true; }
  void prepare(PagedKvCache& c, int64_t seqs, int64_t len, bool eager) override { inner_.prepare(c, seqs, len, eager); }

 private:
  Model& inner_;
};

struct Outputs {
  std::map<std::string, std::vector<int32_t>> ids;
  std::map<std::string, std::vector<TokenLogprobs>> logprobs, prompt_logprobs;
};

Outputs run(Model& m, const nlohmann::json& prompts) {
  EngineConfig c;
  c.num_blocks = 512;
  c.max_model_len = 1024;
  c.eos_ids = {2};
  Engine e(m, nullptr, c);
  int i = 0;
  for (const auto& g : prompts) {
    GenerationParams p;
    p.max_tokens = 24;
    p.sampling.seed = 100 + uint64_t(i);
    p.sampling.temperature = 0.7f + 0.1f * float(i % 4);
    switch (i % 5) {
      case 0: p.sampling.top_p = 0.9f; break;
      case 1: p.sampling.top_k = 20, p.sampling.min_p = 0.05f, p.logprobs = 3; break;
      case 2: p.sampling.repetition_penalty = 1.3f, p.sampling.presence_penalty = 0.5f, p.min_tokens = 8; break;
      case 3: p.n = 3, p.prompt_logprobs = 2, p.sampling.frequency_penalty = 0.3f; break;
      default: p.sampling.temperature = 0, p.logprobs = 1; break;
    }
    e.add_request("r" + std::to_string(i++), g["prompt_ids"].get<std::vector<int32_t>>(), p);
  }
  Outputs out;
  for (int guard = 0; e.has_work() && guard < 100000; ++guard)
    for (RequestOutput& o : e.step()) {
      out.prompt_logprobs[o.id].insert(out.prompt_logprobs[o.id].end(), o.prompt_logprobs.begin(),
                                       o.prompt_logprobs.end());
      for (SampleOutput& s : o.samples) {
        const std::string id = o.id + "/" + std::to_string(s.index);
        out.ids[id].insert(out.ids[id].end(), s.token_ids.begin(), s.token_ids.end());
        out.logprobs[id].insert(out.logprobs[id].end(), s.logprobs.begin(), s.logprobs.end());
      }
    }
  EXPECT_EQ(e.block_manager().num_used_blocks(), 0);
  return out;
}

void expect_same_logprobs(const std::vector<TokenLogprobs>& a, const std::vector<TokenLogprobs>& b,
                          const std::string& id) {
  ASSERT_EQ(a.size(), b.size()) << id;
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].token, b[k].token) << id << " " << k;
    EXPECT_NEAR(a[k].logprob, b[k].logprob, 1e-4) << id << " " << k;
    EXPECT_EQ(a[k].rank, b[k].rank) << id << " " << k;
    ASSERT_EQ(a[k].top.size(), b[k].top.size()) << id << " " << k;
    for (size_t j = 0; j < a[k].top.size(); ++j) EXPECT_EQ(a[k].top[j].first, b[k].top[j].first) << id << " " << k;
  }
}

TEST(CudaEngineSampling, DeviceSamplingMatchesHostSamplingOfTheSameLogits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto ref = nlohmann::json::parse(read_text_file(kModel + "/reference.json"));
  auto gpu = load_model_on(kModel, Device{DeviceKind::CUDA, 0});
  HostSampled host(*gpu);
  const Outputs want = run(host, ref["greedy"]);
  const Outputs got = run(*gpu, ref["greedy"]);
  ASSERT_EQ(got.ids.size(), want.ids.size());
  int same = 0;
  for (const auto& [id, ids] : want.ids) {
    const auto it = got.ids.find(id);
    ASSERT_NE(it, got.ids.end()) << id;
    EXPECT_EQ(it->second, ids) << id;
    same += it->second == ids;
    if (it->second == ids) expect_same_logprobs(got.logprobs.at(id), want.logprobs.at(id), id);
  }
  for (const auto& [id, lp] : want.prompt_logprobs) expect_same_logprobs(got.prompt_logprobs.at(id), lp, id);
  std::printf("CudaEngineSampling: %d of %zu samples identical\n", same, want.ids.size());
}

}  // namespace
}  // namespace kite
