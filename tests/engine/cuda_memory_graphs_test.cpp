// Memory planning and decode graphs on the CUDA device decoder (kite-ref):
// the KV pool takes what --gpu-memory-utilization leaves after weights,
// activations and graph buffers, and a full-size step then stays inside that
// share; decode graphs are recorded for the padded batch sizes and give the
// tokens (and, within BF16 noise, the logits) of eager steps. Also the CPU
// rule: planning returns kv_cache_memory. Skipped without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "engine/engine.h"
#include "model/decoder.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";
const Device kGpu{DeviceKind::CUDA, 0};

TEST(MemoryPlan, CpuReturnsTheConfiguredKvMemory) {
  auto cpu = load_model(kModel);
  EngineConfig c;
  c.kv_cache_memory = 12345678;
  EXPECT_EQ(plan_kv_cache_memory(*cpu, c, 0.5, nullptr), c.kv_cache_memory);
}

TEST(CudaMemoryPlan, KvPoolFillsTheShareAndAFullStepFits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto gpu = load_model_on(kModel, kGpu);
  EngineConfig c;
  c.max_model_len = 2048;
  c.scheduler.max_num_batched_tokens = 2048;
  c.scheduler.max_num_seqs = 64;
  const double util = 0.3;
  std::string report;
  const size_t kv = plan_kv_cache_memory(*gpu, c, util, &report);
  std::printf("%s\n", report.c_str());
  EXPECT_NE(report.find("KV cache"), std::string::npos);
  const double total = double(device_total_memory(kGpu));
  EXPECT_GT(double(kv), 0.2 * total) << "a 30 MB model leaves most of a 30% share to the KV cache";
  EXPECT_LT(double(kv), util * total);
  EXPECT_GT(gpu->activation_bytes(2048, 64), size_t(0));
  // Too small a share: an error naming the flag, not an abort.
  try {
    plan_kv_cache_memory(*gpu, c, 1e-6, nullptr);
    FAIL() << "a share below what is in use must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gpu_memory_utilization"), std::string::npos) << e.what();
  }
  EXPECT_THROW(plan_kv_cache_memory(*gpu, c, 1.5, nullptr), Error);
  // With that pool, graphs recorded and a full-budget prefill plus decodes
  // run, the pool's peak stays inside the share.
  c.kv_cache_memory = kv;
  c.eos_ids = {2};
  reset_peak_memory(kGpu);
  {
    Engine e(*gpu, nullptr, c);
    GenerationParams p;
    p.sampling.temperature = 0;
    p.max_tokens = 8;
    p.ignore_eos = true;
    for (int i = 0; i < 64; ++i) e.add_request("r" + std::to_string(i), std::vector<int32_t>(96, 5 + i), p);
    while (e.has_work()) e.step();
    synchronize(kGpu);
  }
  const MemoryStats s = memory_stats(kGpu);
  const double in_use_other = total - double(device_free_memory(kGpu)) - double(s.bytes_reserved);
  EXPECT_LE(double(s.peak_bytes_in_use) + std::max(0.0, in_use_other), util * total * 1.02)
      << "peak " << s.peak_bytes_in_use << " B of the pool";
}

// Decode steps of `batch` sequences with prompts of different lengths, the
// logits of every step.
std::vector<std::vector<float>> decode_logits(Model& m, bool eager, int batch, std::vector<int32_t>* ids) {
  EngineConfig c;
  c.num_blocks = 256;
  c.max_model_len = 512;
  c.scheduler.max_num_seqs = 8;
  c.enforce_eager = eager;
  Engine e(m, nullptr, c);
  if (auto* dm = dynamic_cast<DecoderModel*>(&m)) {
    EXPECT_EQ(dm->num_graphs(), eager ? 0u : 4u) << "graphs for padded batches 1, 2, 4, 8";
  }
  std::vector<std::vector<float>> out;
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = 12;
  p.ignore_eos = true;
  p.logprobs = 0;  // the logits path: compare log-probabilities of the chosen tokens
  for (int i = 0; i < batch; ++i) {
    std::vector<int32_t> prompt;
    for (int t = 0; t < 7 + 13 * i; ++t) prompt.push_back(int32_t(11 + 37 * t + i) % 8000 + 3);
    e.add_request("r" + std::to_string(i), prompt, p);
  }
  while (e.has_work())
    for (RequestOutput& o : e.step())
      for (SampleOutput& s : o.samples) {
        for (int32_t t : s.token_ids) ids->push_back(t);
        for (const TokenLogprobs& lp : s.logprobs) out.push_back({lp.logprob});
      }
  return out;
}

TEST(CudaGraphs, DecodeGraphsGiveTheTokensOfEagerSteps) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto gpu = load_model_on(kModel, kGpu);
  for (int batch : {1, 3, 8}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    std::vector<int32_t> ids_graph, ids_eager;
    const auto lg = decode_logits(*gpu, false, batch, &ids_graph);
    const auto le = decode_logits(*gpu, true, batch, &ids_eager);
    EXPECT_EQ(ids_graph, ids_eager);
    ASSERT_EQ(lg.size(), le.size());
    for (size_t i = 0; i < lg.size(); ++i) EXPECT_NEAR(lg[i][0], le[i][0], 2e-2) << i;
  }
}

}  // namespace
}  // namespace kite
