// The engine end to end on the real model (shared/models/kite-ref): batched,
// chunked, prefix-shared, preempted runs give exactly the tokens of each
// request run alone; sampling, stops, logprobs, aborts and rejections.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/mapped_file.h"
#include "engine/async_engine.h"
#include "model/generation.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

Model& model() {
  static std::unique_ptr<Model> m = load_model(kModel);
  return *m;
}
const Tokenizer& tokenizer() {
  static std::unique_ptr<Tokenizer> t = Tokenizer::load(kModel);
  return *t;
}

EngineConfig small_config(int64_t num_blocks, int64_t budget = 2048) {
  EngineConfig c;
  c.num_blocks = num_blocks;
  c.max_model_len = 1024;
  c.scheduler.max_num_batched_tokens = budget;
  c.eos_ids = {2};
  return c;
}

struct Result {
  std::vector<int32_t> ids;
  std::string text;
  FinishReason finish = FinishReason::None;
  std::vector<TokenLogprobs> logprobs;
  std::vector<TokenLogprobs> prompt_logprobs;
  std::string stop_string;
};

// Steps until every request is done; collects sample 0 of each (or every
// sample with the "id#i" key when n > 1).
std::map<std::string, Result> run_all(Engine& e, int64_t* max_running = nullptr) {
  std::map<std::string, Result> res;
  for (int guard = 0; e.has_work() && guard < 100000; ++guard) {
    for (RequestOutput& o : e.step()) {
      if (!o.prompt_logprobs.empty()) res[o.id].prompt_logprobs = o.prompt_logprobs;
      for (SampleOutput& s : o.samples) {
        Result& r = res[s.index == 0 ? o.id : o.id + "#" + std::to_string(s.index)];
        r.ids.insert(r.ids.end(), s.token_ids.begin(), s.token_ids.end());
        r.text += s.text;
        r.logprobs.insert(r.logprobs.end(), s.logprobs.begin(), s.logprobs.end());
        if (s.finish != FinishReason::None) {
          EXPECT_EQ(r.finish, FinishReason::None) << "finished twice";
          r.finish = s.finish;
          r.stop_string = s.stop_string;
        }
      }
    }
    e.block_manager().check_invariants();
    if (max_running) *max_running = std::max(*max_running, e.stats().num_running);
  }
  EXPECT_FALSE(e.has_work());
  EXPECT_EQ(e.block_manager().num_used_blocks(), 0) << "KV blocks leaked";
  return res;
}

std::vector<int32_t> alone_greedy(const std::vector<int32_t>& prompt, int64_t max_tokens) {
  GenerateOptions opt;
  opt.max_tokens = max_tokens;
  opt.sampling.temperature = 0;
  opt.stop_ids = {2};
  std::vector<int32_t> got;
  generate(model(), prompt, opt, [&](int32_t t) {
    got.push_back(t);
    return true;
  });
  return got;
}

GenerationParams greedy(int64_t max_tokens) {
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

TEST(Engine, ReferenceGreedySequencesBatchedTogether) {
  auto ref = nlohmann::json::parse(read_text_file(kModel + "/reference.json"));
  Engine e(model(), &tokenizer(), small_config(256));
  int i = 0;
  for (const auto& g : ref["greedy"]) e.add_request("r" + std::to_string(i++), g["prompt_ids"], greedy(48));
  auto res = run_all(e);
  i = 0;
  for (const auto& g : ref["greedy"]) {
    const Result& r = res["r" + std::to_string(i++)];
    EXPECT_EQ(r.ids, g["new_ids"].get<std::vector<int32_t>>()) << g["prompt"];
    // HF decoded the new ids alone; the engine keeps the leading space a continuation has.
    const std::string want = g["text"].get<std::string>();
    EXPECT_TRUE(r.text == want || r.text == " " + want) << r.text << " vs " << want;
  }
}

// 32 requests of random lengths, many sharing prefixes, with a token budget
// that forces chunked prefill and a KV pool that forces preemption.
TEST(Engine, BatchedChunkedPreemptedEqualsAlone) {
  auto text = tokenizer().encode(read_text_file(std::string(KITE_SHARED_DIR) + "/text/valid/austen.txt"), true);
  std::mt19937 rng(42);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> max_tokens;
  for (int i = 0; i < 32; ++i) {
    const int64_t len = std::uniform_int_distribution<int64_t>(3, 120)(rng);
    // Half share the document's opening (prefix-cache hits); the rest start elsewhere.
    const int64_t start = i % 2 == 0 ? 0 : std::uniform_int_distribution<int64_t>(1, 5000)(rng);
    std::vector<int32_t> p(text.begin() + start, text.begin() + start + len);
    if (start != 0) p.insert(p.begin(), 1);
    prompts.push_back(p);
    max_tokens.push_back(std::uniform_int_distribution<int64_t>(1, 40)(rng));
  }
  Engine e(model(), &tokenizer(), small_config(/*num_blocks=*/24, /*budget=*/64));
  for (int i = 0; i < 32; ++i)
    e.add_request("q" + std::to_string(i), prompts[size_t(i)], greedy(max_tokens[size_t(i)]));
  int64_t max_running = 0;
  auto res = run_all(e, &max_running);
  const EngineStats st = e.stats();
  EXPECT_GT(st.num_preemptions, 0) << "the pool was meant to force preemption";
  EXPECT_GT(st.prefix_cache.hit_tokens, 0) << "shared prefixes were meant to hit the cache";
  EXPECT_GT(max_running, 4);
  EXPECT_EQ(st.requests_finished, 32);
  for (int i = 0; i < 32; ++i) {
    const Result& r = res["q" + std::to_string(i)];
    EXPECT_EQ(r.ids, alone_greedy(prompts[size_t(i)], max_tokens[size_t(i)])) << "request " << i;
    EXPECT_NE(r.finish, FinishReason::None);
  }
}

TEST(Engine, SeededSamplingIsReproducibleAcrossBatchMixes) {
  const std::vector<int32_t> prompt = tokenizer().encode("It was a truth universally acknowledged", true);
  GenerationParams p;
  p.sampling.temperature = 0.9f;
  p.sampling.top_p = 0.95f;
  p.sampling.seed = 1234;
  p.max_tokens = 40;
  p.ignore_eos = true;
  Engine alone(model(), &tokenizer(), small_config(64));
  alone.add_request("s", prompt, p);
  const Result want = run_all(alone)["s"];
  ASSERT_EQ(want.ids.size(), 40u);

  // The same request among greedy and other sampled ones, in a pool small enough to preempt.
  Engine mixed(model(), &tokenizer(), small_config(12, 16));
  for (int i = 0; i < 6; ++i) {
    GenerationParams o = p;
    o.sampling.seed = 77 + i;
    mixed.add_request("o" + std::to_string(i), tokenizer().encode("Anne had been " + std::to_string(i), true), o);
  }
  mixed.add_request("s", prompt, p);
  auto res = run_all(mixed);
  EXPECT_GT(mixed.stats().num_preemptions, 0);
  EXPECT_EQ(res["s"].ids, want.ids);
  EXPECT_EQ(res["s"].text, want.text);
  EXPECT_NE(res["o0"].ids, res["o1"].ids);

  // n = 2: sample 0 is the n = 1 request, sample 1 differs; they share the prompt's blocks.
  Engine two(model(), &tokenizer(), small_config(64));
  GenerationParams p2 = p;
  p2.n = 2;
  two.add_request("s", prompt, p2);
  auto r2 = run_all(two);
  EXPECT_EQ(r2["s"].ids, want.ids);
  EXPECT_EQ(r2["s#1"].ids.size(), 40u);
  EXPECT_NE(r2["s#1"].ids, want.ids);
}

// generate() samples as the engine does (ops::sample_rows, the same RNG
// draws, the same penalty tokens): a seeded request gives the same tokens.
TEST(Engine, GenerateSamplesAsTheEngineDoes) {
  const std::vector<int32_t> prompt = tokenizer().encode("It was a truth universally acknowledged", true);
  GenerationParams p;
  p.sampling.temperature = 0.9f;
  p.sampling.top_p = 0.95f;
  p.sampling.repetition_penalty = 1.2f;
  p.sampling.frequency_penalty = 0.3f;
  p.sampling.seed = 4321;
  p.max_tokens = 32;
  p.ignore_eos = true;
  Engine e(model(), &tokenizer(), small_config(64));
  e.add_request("s", prompt, p);
  const Result want = run_all(e)["s"];
  ASSERT_EQ(want.ids.size(), 32u);

  GenerateOptions opt;
  opt.max_tokens = p.max_tokens;
  opt.sampling = p.sampling;
  std::vector<int32_t> got;
  generate(model(), prompt, opt, [&](int32_t t) {
    got.push_back(t);
    return true;
  });
  EXPECT_EQ(got, want.ids);
}

TEST(Engine, StopStringsEndTheTextAndAreHeldBackWhileStreaming) {
  auto ref = nlohmann::json::parse(read_text_file(kModel + "/reference.json"));
  const auto& g = ref["greedy"][0];
  const std::string full = g["text"].get<std::string>();
  ASSERT_GT(full.size(), 30u);
  const std::string stop = full.substr(full.size() / 2, 6);  // a stop string in the middle of the output
  const size_t at = full.find(stop);
  for (bool include : {false, true}) {
    Engine e(model(), &tokenizer(), small_config(64));
    GenerationParams p = greedy(48);
    p.stop = {"never appears here", stop};
    p.include_stop_str_in_output = include;
    e.add_request("a", g["prompt_ids"], p);
    std::string streamed;
    while (e.has_work())
      for (RequestOutput& o : e.step()) {
        for (SampleOutput& s : o.samples) {
          streamed += s.text;
          if (s.finish == FinishReason::None) {  // nothing past a possible stop-string start goes out
            EXPECT_EQ(streamed, full.substr(0, streamed.size()));
            EXPECT_EQ(streamed.find(stop), std::string::npos);
          } else {
            EXPECT_EQ(s.finish, FinishReason::Stop);
            EXPECT_EQ(s.stop_string, stop);
          }
        }
      }
    EXPECT_EQ(streamed, full.substr(0, at + (include ? stop.size() : 0)));
  }
}

TEST(Engine, LogprobsMatchTheModelsDistribution) {
  const std::vector<int32_t> prompt = tokenizer().encode("The kernel scheduler decides", true);
  Engine e(model(), &tokenizer(), small_config(64));
  GenerationParams p = greedy(5);
  p.logprobs = 3;
  p.prompt_logprobs = 2;
  e.add_request("l", prompt, p);
  Result r = run_all(e)["l"];
  ASSERT_EQ(r.logprobs.size(), r.ids.size());
  ASSERT_EQ(r.prompt_logprobs.size(), prompt.size() - 1);
  // Reference: the contiguous forward over prompt + output, all positions.
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), r.ids.begin(), r.ids.end());
  KvCache cache(model().config(), int64_t(all.size()));
  Tensor logits = model().forward(all, cache, true);  // [n, vocab]
  const int64_t vocab = model().config().vocab_size;
  auto check = [&](const TokenLogprobs& t, int64_t pos, int32_t want_token, size_t top) {
    std::span<const float> row(logits.data_as<const float>() + pos * vocab, size_t(vocab));
    const double lse = log_sum_exp(row);
    EXPECT_EQ(t.token, want_token);
    EXPECT_NEAR(t.logprob, double(row[size_t(want_token)]) - lse, 1e-4);
    ASSERT_EQ(t.top.size(), top);
    EXPECT_EQ(t.top[0].first, argmax(row));
    EXPECT_NEAR(t.top[0].second, double(row[size_t(argmax(row))]) - lse, 1e-4);
    for (size_t j = 1; j < top; ++j) EXPECT_LE(t.top[j].second, t.top[j - 1].second);
  };
  for (size_t i = 0; i < r.ids.size(); ++i) {
    check(r.logprobs[i], int64_t(prompt.size() + i) - 1, r.ids[i], 3);
    EXPECT_EQ(r.logprobs[i].rank, 1);  // greedy picks the top token
  }
  for (size_t i = 0; i < r.prompt_logprobs.size(); ++i) check(r.prompt_logprobs[i], int64_t(i), prompt[i + 1], 2);
}

TEST(Engine, AbortFreesBlocksAndReportsAbort) {
  Engine e(model(), &tokenizer(), small_config(64));
  GenerationParams p = greedy(200);
  p.ignore_eos = true;
  e.add_request("a", tokenizer().encode("one", true), p);
  e.add_request("b", tokenizer().encode("two", true), greedy(10));
  for (int i = 0; i < 3; ++i) e.step();
  EXPECT_GT(e.block_manager().num_used_blocks(), 0);
  EXPECT_TRUE(e.abort("a"));
  EXPECT_FALSE(e.abort("a"));
  EXPECT_FALSE(e.abort("nope"));
  auto res = run_all(e);
  EXPECT_EQ(res["a"].finish, FinishReason::Abort);
  EXPECT_EQ(res["b"].finish, FinishReason::Length);
  EXPECT_EQ(res["b"].ids.size(), 7u);  // 3 of its 10 tokens came before run_all
}

TEST(Engine, StopIdsEosMinTokensAndLength) {
  const std::vector<int32_t> prompt = tokenizer().encode("The file system keeps", true);
  const std::vector<int32_t> plain = alone_greedy(prompt, 20);
  ASSERT_EQ(plain.size(), 20u);
  size_t at = 2;  // a token whose first appearance is at index `at`
  while (std::find(plain.begin(), plain.begin() + ptrdiff_t(at), plain[at]) != plain.begin() + ptrdiff_t(at)) ++at;
  const int32_t t = plain[at];
  EngineConfig cfg = small_config(64);
  cfg.eos_ids = {2, t};  // t plays EOS
  Engine e(model(), &tokenizer(), cfg);
  e.add_request("eos", prompt, greedy(20));
  GenerationParams p = greedy(20);
  p.ignore_eos = true;
  e.add_request("ignore", prompt, p);
  p.ignore_eos = false;
  p.min_tokens = int64_t(at) + 3;
  e.add_request("min", prompt, p);
  Engine e2(model(), &tokenizer(), small_config(64));
  GenerationParams q = greedy(20);
  q.stop_token_ids = {t};
  e2.add_request("stop_id", prompt, q);
  auto res = run_all(e);
  auto res2 = run_all(e2);
  const std::vector<int32_t> upto(plain.begin(), plain.begin() + ptrdiff_t(at) + 1);
  EXPECT_EQ(res["eos"].ids, upto);
  EXPECT_EQ(res["eos"].finish, FinishReason::Stop);
  EXPECT_EQ(res["ignore"].ids, plain);
  EXPECT_EQ(res["ignore"].finish, FinishReason::Length);
  ASSERT_GE(res["min"].ids.size(), at + 3);
  for (size_t i = 0; i < at + 3; ++i) EXPECT_NE(res["min"].ids[i], t) << "EOS sampled before min_tokens";
  EXPECT_EQ(res2["stop_id"].ids, upto);
  EXPECT_EQ(res2["stop_id"].finish, FinishReason::Stop);
  // The stop id is kept in the ids but not in the text.
  EXPECT_EQ(res2["stop_id"].text, res["eos"].text);
}

TEST(Engine, ZeroMaxTokensScoresThePromptAndGeneratesNothing) {
  // lm-eval's loglikelihood requests: prompt logprobs only, finished after
  // prefill (chunked here), with no token generated.
  const std::vector<int32_t> prompt = tokenizer().encode("The kernel scheduler decides which task runs next", true);
  Engine ref(model(), &tokenizer(), small_config(64));
  GenerationParams p = greedy(1);
  p.prompt_logprobs = 1;
  ref.add_request("r", prompt, p);
  Result want = run_all(ref)["r"];
  ASSERT_EQ(want.prompt_logprobs.size(), prompt.size() - 1);

  Engine e(model(), &tokenizer(), small_config(64, /*budget=*/4));
  p.max_tokens = 0;
  e.add_request("z", prompt, p);
  e.add_request("one", {1}, p);  // a one-token prompt: nothing to score
  GenerationParams two = p;
  two.n = 2;
  e.add_request("n2", prompt, two);
  const int64_t generated_before = e.stats().generation_tokens;
  auto res = run_all(e);
  EXPECT_EQ(e.stats().generation_tokens, generated_before);
  for (const std::string id : {"z", "n2", "n2#1", "one"}) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(res[id].ids.empty());
    EXPECT_EQ(res[id].text, "");
    EXPECT_EQ(res[id].finish, FinishReason::Length);
  }
  for (const std::string id : {"z", "n2"}) {
    ASSERT_EQ(res[id].prompt_logprobs.size(), want.prompt_logprobs.size());
    for (size_t i = 0; i < want.prompt_logprobs.size(); ++i) {
      EXPECT_EQ(res[id].prompt_logprobs[i].token, want.prompt_logprobs[i].token);
      EXPECT_FLOAT_EQ(res[id].prompt_logprobs[i].logprob, want.prompt_logprobs[i].logprob);
    }
  }
  EXPECT_TRUE(res["one"].prompt_logprobs.empty());

  // Without prompt logprobs there is nothing to return: rejected.
  try {
    e.add_request("x", prompt, greedy(0));
    ADD_FAILURE() << "accepted max_tokens 0 without prompt logprobs";
  } catch (const Error& err) {
    EXPECT_EQ(err.field(), "max_tokens");
  }
}

TEST(Engine, RequestsThatCanNeverRunAreRejectedAtOnce) {
  Engine e(model(), &tokenizer(), small_config(4));  // 64 token slots
  const std::vector<int32_t> prompt = {1, 100, 200};
  auto rejects = [&](const std::string& field, std::vector<int32_t> ids, GenerationParams p) {
    try {
      e.add_request("x", ids, p);
      ADD_FAILURE() << "accepted; expected a rejection on " << field;
    } catch (const Error& err) {
      EXPECT_EQ(err.field(), field) << err.what();
    }
  };
  rejects("max_tokens", prompt, greedy(62));  // 65 tokens > 4 blocks of 16
  rejects("prompt", {}, greedy(4));
  rejects("prompt", {1, 99999}, greedy(4));
  GenerationParams p = greedy(4);
  p.n = 0;
  rejects("n", prompt, p);
  p = greedy(4);
  p.stop = {""};
  rejects("stop", prompt, p);
  p = greedy(4);
  p.sampling.top_p = 0;
  rejects("top_p", prompt, p);
  Engine big(model(), &tokenizer(), small_config(1000));
  try {
    big.add_request("x", prompt, greedy(1022));  // over max_model_len 1024
    ADD_FAILURE() << "accepted a request over max_model_len";
  } catch (const Error& err) {
    EXPECT_EQ(err.field(), "max_tokens");
  }
  big.add_request("dup", prompt, greedy(2));
  EXPECT_THROW(big.add_request("dup", prompt, greedy(2)), Error);
  EXPECT_FALSE(e.has_work());
}

TEST(AsyncEngine, ConcurrentStreamsFromManyThreads) {
  auto engine = std::make_unique<Engine>(model(), &tokenizer(), small_config(48, 64));
  AsyncEngine ae(std::move(engine));
  const int kClients = 12;
  std::vector<std::vector<int32_t>> got(kClients), prompts(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    prompts[size_t(i)] = tokenizer().encode("Chapter " + std::to_string(i) + ": the", true);
    clients.emplace_back([&, i] {
      auto stream = ae.submit("c" + std::to_string(i), prompts[size_t(i)], greedy(20));
      RequestOutput o;
      bool finished = false;
      while (stream->next(o)) {
        ASSERT_EQ(o.id, "c" + std::to_string(i));
        for (auto& s : o.samples) got[size_t(i)].insert(got[size_t(i)].end(), s.token_ids.begin(), s.token_ids.end());
        finished = o.finished;
      }
      EXPECT_TRUE(finished);
    });
  }
  for (auto& t : clients) t.join();
  ae.wait_idle();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(got[size_t(i)], alone_greedy(prompts[size_t(i)], 20)) << i;
  EXPECT_THROW(ae.submit("bad", {}, greedy(2)), Error);
  // Abort through the async API: the stream ends with finish reason abort.
  GenerationParams long_run = greedy(500);
  long_run.ignore_eos = true;
  auto s = ae.submit("long", {1, 5, 6}, long_run);
  ae.abort("long");
  RequestOutput o;
  FinishReason last = FinishReason::None;
  while (s->next(o))
    for (auto& smp : o.samples)
      if (smp.finish != FinishReason::None) last = smp.finish;
  EXPECT_EQ(last, FinishReason::Abort);
  ae.wait_idle();
  EXPECT_EQ(ae.stats().kv_blocks_used, 0);
}

// The queue limit counts sequences waiting for a seat: a burst that fits the
// free seats is accepted whatever --max-queue says; past it, QueueFullError
// (429) with a retry suggestion; a call that could never fit is a plain
// Error naming n (400).
TEST(AsyncEngine, QueueLimitCountsSequencesWaitingForASeat) {
  EngineConfig c = small_config(256);
  c.scheduler.max_num_seqs = 4;
  AsyncEngine ae(std::make_unique<Engine>(model(), &tokenizer(), c));
  ae.set_max_waiting(2);
  GenerationParams long_run = greedy(200);
  long_run.ignore_eos = true;
  std::vector<Submission> six;
  for (int i = 0; i < 6; ++i) six.push_back({"g" + std::to_string(i), {1, int32_t(20 + i), 7}});
  auto streams = ae.submit_group(six, long_run);  // 4 seats + 2 waiting: accepted on an idle engine
  EXPECT_EQ(streams.size(), 6u);
  try {
    ae.submit("one-more", {1, 5, 6}, long_run);
    ADD_FAILURE() << "a seventh sequence must not fit 4 seats + 2 waiting";
  } catch (const QueueFullError& e) {
    EXPECT_EQ(e.field(), "queue");
    EXPECT_GE(e.retry_after_s(), 1);
    EXPECT_LE(e.retry_after_s(), 60);
  }
  // Seven sequences in one call could never be queued: not "retry later".
  std::vector<Submission> seven;
  for (int i = 0; i < 7; ++i) seven.push_back({"h" + std::to_string(i), {1, 9, 9}});
  try {
    ae.submit_group(seven, greedy(2));
    ADD_FAILURE() << "7 > 4 + 2 must be refused outright";
  } catch (const QueueFullError&) {
    ADD_FAILURE() << "7 > 4 + 2 got QueueFullError (429), expected a plain Error (400)";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "n");
  }
  for (int i = 0; i < 6; ++i) ae.abort("g" + std::to_string(i));
  ae.wait_idle();
  EXPECT_EQ(ae.stats().kv_blocks_used, 0);
  EXPECT_EQ(ae.stats().num_waiting, 0);

  // A burst of single requests at an idle engine with free seats: all in.
  AsyncEngine burst(std::make_unique<Engine>(model(), &tokenizer(), [] {
    EngineConfig b = small_config(256);
    b.scheduler.max_num_seqs = 8;
    return b;
  }()));
  burst.set_max_waiting(1);
  std::vector<std::shared_ptr<RequestStream>> got;
  for (int i = 0; i < 9; ++i)
    EXPECT_NO_THROW(got.push_back(burst.submit("b" + std::to_string(i), {1, 4, int32_t(5 + i)}, long_run)));
  EXPECT_THROW(burst.submit("b9", {1, 4, 5}, long_run), QueueFullError);
  for (int i = 0; i < 9; ++i) burst.abort("b" + std::to_string(i));
  burst.wait_idle();
  for (auto& st : got) {
    RequestOutput o;
    bool finished = false;
    while (st->next(o)) finished = o.finished;
    EXPECT_TRUE(finished);
  }
  EXPECT_EQ(burst.stats().kv_blocks_used, 0);
}

}  // namespace
}  // namespace kite
