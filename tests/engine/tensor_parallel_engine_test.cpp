// The engine over a tensor-parallel model on the CPU (2 ranks as threads,
// local all-reduce): greedy outputs on kite-ref equal one rank's.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "core/mapped_file.h"
#include "core/socket.h"
#include "engine/engine.h"
#include "model/tensor_parallel.h"

namespace kite {
namespace {

const std::string kRef = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

TEST(TensorParallel, EngineGreedyOutputsEqualOneRank) {
  const auto ref = nlohmann::json::parse(read_text_file(kRef + "/reference.json"));
  auto src = load_decoder_model(kRef, "tensor-parallel");
  ASSERT_TRUE(src);
  auto run = [&](Model& m, bool sampled) {
    EngineConfig c;
    c.num_blocks = 128;
    c.max_model_len = 512;
    c.eos_ids = {2};
    Engine e(m, nullptr, c);
    int i = 0;
    for (const auto& g : ref["greedy"]) {
      GenerationParams p;
      p.sampling.temperature = 0;
      p.max_tokens = 32;
      p.ignore_eos = true;
      if (sampled) {  // seeded sampling with logprobs: rank 0 samples from the gathered logits
        p.sampling.temperature = 0.8f;
        p.sampling.top_p = 0.9f;
        p.sampling.seed = uint64_t(100 + i);
        p.logprobs = 2;
      }
      e.add_request("r" + std::to_string(i++), g["prompt_ids"].template get<std::vector<int32_t>>(), p);
    }
    std::map<std::string, std::vector<int32_t>> out;
    while (e.has_work())
      for (RequestOutput& o : e.step())
        for (SampleOutput& s : o.samples) out[o.id].insert(out[o.id].end(), s.token_ids.begin(), s.token_ids.end());
    return out;
  };
  DecoderModel& one = *src;
  TensorParallelModel tp(src->checkpoint(), {kCpu, kCpu}, make_local_communicators(2));
  for (bool sampled : {false, true}) {
    SCOPED_TRACE(sampled ? "seeded sampling" : "greedy");
    const auto a = run(one, sampled), b = run(tp, sampled);
    ASSERT_EQ(a.size(), ref["greedy"].size());
    for (const auto& [id, toks] : a) {
      EXPECT_EQ(toks.size(), 32u) << id;
      EXPECT_EQ(b.at(id), toks) << id;
    }
  }
}

// Two "nodes" in one process (each a thread with its own TCP connections,
// as two processes would have): node 0 runs the engine and sends every call
// to node 1, the ranks' collectives go over TCP. Greedy outputs equal one
// rank's.
TEST(TensorParallel, TwoNodesOverTcpGiveOneRanksOutputs) {
  const auto ref = nlohmann::json::parse(read_text_file(kRef + "/reference.json"));
  int port = 0;
  {
    Listener probe(0);
    port = probe.port();  // free now (and, most likely, port + 1 too)
  }
  ClusterSpec k;
  k.nnodes = 2;
  k.master_port = port;
  k.timeout_s = 60;
  std::exception_ptr node1_error;
  std::thread node1([&] {
    try {
      ClusterSpec k1 = k;
      k1.node_rank = 1;
      EXPECT_EQ(load_model_parallel(kRef, kCpu, 2, k1), nullptr);  // returns once node 0 is done
    } catch (...) {
      node1_error = std::current_exception();
    }
  });
  std::map<std::string, std::vector<int32_t>> got, want;
  {
    auto node0 = load_model_parallel(kRef, kCpu, 2, k);
    ASSERT_TRUE(node0);
    EXPECT_EQ(node0->tensor_parallel_size(), 2);
    auto one = load_model(kRef);
    auto run = [&](Model& m) {
      EngineConfig c;
      c.num_blocks = 64;
      c.max_model_len = 256;
      c.eos_ids = {2};
      Engine e(m, nullptr, c);
      for (size_t i = 0; i < 3; ++i) {
        GenerationParams p;
        p.sampling.temperature = 0;
        p.max_tokens = 16;
        p.ignore_eos = true;
        p.n = i == 2 ? 2 : 1;  // n = 2 forks: copy-on-write of a shared block on both nodes
        e.add_request("r" + std::to_string(i), ref["greedy"][i]["prompt_ids"].template get<std::vector<int32_t>>(), p);
      }
      std::map<std::string, std::vector<int32_t>> out;
      while (e.has_work())
        for (RequestOutput& o : e.step())
          for (SampleOutput& so : o.samples) {
            auto& v = out[o.id + "/" + std::to_string(so.index)];
            v.insert(v.end(), so.token_ids.begin(), so.token_ids.end());
          }
      return out;
    };
    got = run(*node0);
    want = run(*one);
  }
  node1.join();
  if (node1_error) std::rethrow_exception(node1_error);
  EXPECT_EQ(got, want);
  EXPECT_EQ(got.size(), 4u);
}

}  // namespace
}  // namespace kite
