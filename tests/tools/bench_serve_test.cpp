// kite bench serve's parts (datasets, pacing, vLLM's metric definitions)
// and a whole run against an in-process `kite serve` on kite-ref (CPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <regex>

#include "../server/test_instance.h"
#include "core/error.h"
#include "tools/bench_serve/client.h"
#include "tools/bench_serve/dataset.h"
#include "tools/bench_serve/plots.h"
#include "tools/bench_serve/report.h"

namespace kite::bench {
namespace {

using nlohmann::json;
const std::string kShareGpt = std::string(KITE_FIXTURES_DIR) + "/bench/sharegpt_small.json";

const Tokenizer& tok() { return *server::test::shared().tok; }

// Options for `model` on an in-process server's completions route.
ClientOptions client_for(const server::test::Instance& inst, const std::string& model,
                         const std::string& route = "/v1/completions") {
  ClientOptions c;
  c.endpoint = parse_endpoint("http://127.0.0.1:" + std::to_string(inst.port()), route);
  c.model = model;
  return c;
}

double metric(const std::string& text, const std::string& name) {
  std::smatch m;
  std::regex re("(^|\\n)" + std::regex_replace(name, std::regex(":"), ":") + R"(\{[^}]*\} ([0-9.eE+-]+))");
  if (!std::regex_search(text, m, re)) return -1;
  return std::stod(m[2]);
}

TEST(BenchServe, EndpointParsing) {
  Endpoint e = parse_endpoint("http://10.0.0.5:8001", "/v1/chat/completions");
  EXPECT_EQ(e.host, "10.0.0.5");
  EXPECT_EQ(e.port, "8001");
  EXPECT_EQ(e.path, "/v1/chat/completions");
  EXPECT_TRUE(e.chat);
  e = parse_endpoint("http://localhost:8000/v1/", "/v1/completions");  // the /v1 once
  EXPECT_EQ(e.path, "/v1/completions");
  EXPECT_FALSE(e.chat);
  EXPECT_THROW(parse_endpoint("https://x:1", "/v1/completions"), Error);
  EXPECT_THROW(parse_endpoint("x:1", "/v1/completions"), Error);
  EXPECT_THROW(parse_endpoint("http://x:port", "/v1/completions"), Error);
  EXPECT_THROW(parse_endpoint("http://x:1", "/v1/embeddings"), Error);
  EXPECT_THROW(parse_endpoint("http://x:1", "v1/completions"), Error);
}

TEST(BenchServe, PercentilesAndStatsFollowNumpy) {
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 50), 2.5);
  EXPECT_NEAR(percentile({4, 1, 3, 2}, 99), 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(percentile({}, 99), 0);
  // Two requests: TPOT = (latency - ttft) / (out - 1); ITL pooled.
  std::vector<RequestResult> rs(3);
  rs[0] = {true, "", 0, 0.1, 1.1, {0.2, 0.3, 0.5}, 10, 4, true, 10, "abcd"};
  rs[1] = {true, "", 0, 0.3, 0.8, {0.5}, 20, 2, true, 20, "ab"};
  rs[2].error = "HTTP 400: bad";
  ReportOptions opt;
  opt.metric_percentiles = {50, 99};
  opt.goodput_ms = {{"ttft", 200}};
  json m = compute_metrics(rs, 2.0, opt, nullptr);
  EXPECT_EQ(m["completed"], 2);
  EXPECT_EQ(m["failed"], 1);
  EXPECT_EQ(m["total_input_tokens"], 30);
  EXPECT_EQ(m["total_output_tokens"], 6);
  EXPECT_DOUBLE_EQ(m["request_throughput"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(m["request_goodput"].get<double>(), 0.5);  // only the first meets ttft <= 200 ms
  EXPECT_DOUBLE_EQ(m["output_throughput"].get<double>(), 3.0);
  EXPECT_DOUBLE_EQ(m["total_token_throughput"].get<double>(), 18.0);
  EXPECT_NEAR(m["mean_ttft_ms"].get<double>(), 200, 1e-9);
  EXPECT_NEAR(m["mean_tpot_ms"].get<double>(), (1000.0 / 3 + 500.0) / 2, 1e-9);
  EXPECT_NEAR(m["mean_itl_ms"].get<double>(), 375, 1e-9);
  EXPECT_NEAR(m["median_itl_ms"].get<double>(), 400, 1e-9);
  EXPECT_NEAR(m["std_ttft_ms"].get<double>(), 100, 1e-9);
  EXPECT_TRUE(m.contains("p99_e2el_ms"));
  EXPECT_TRUE(m.contains("p50_tpot_ms"));
  EXPECT_EQ(m["errors"][2], "HTTP 400: bad");
  EXPECT_EQ(m["output_lens"], json({4, 2, 0}));
  const std::string text = format_report(m, opt);
  EXPECT_NE(text.find("Successful requests:"), std::string::npos);
  EXPECT_NE(text.find("P99 TTFT (ms):"), std::string::npos);
  EXPECT_THROW(parse_metric_percentiles("50,abc"), Error);
  EXPECT_THROW(parse_metric_percentiles("100"), Error);
  EXPECT_THROW(parse_percentile_metrics("ttft,latency"), Error);
  EXPECT_THROW(parse_goodput({"ttft=5"}), Error);
  EXPECT_THROW(parse_goodput({"tpot:-1"}), Error);
  EXPECT_EQ(parse_goodput({"ttft:500", "tpot:50"}).at("tpot"), 50);
}

TEST(BenchServe, ArrivalsArePoissonAtTheRate) {
  auto t = arrival_times(4000, 50.0, 1.0, 7);
  ASSERT_EQ(t.size(), 4000u);
  EXPECT_EQ(t[0], 0);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
  const double mean_gap = t.back() / 3999.0;
  EXPECT_NEAR(mean_gap, 0.02, 0.02 * 0.05);
  // Exponential gaps: the coefficient of variation is 1; burstiness 0.25 makes it 2.
  auto cv = [](const std::vector<double>& a) {
    std::vector<double> g;
    for (size_t i = 1; i < a.size(); ++i) g.push_back(a[i] - a[i - 1]);
    double m = 0, v = 0;
    for (double x : g) m += x / double(g.size());
    for (double x : g) v += (x - m) * (x - m) / double(g.size());
    return std::sqrt(v) / m;
  };
  EXPECT_NEAR(cv(t), 1.0, 0.08);
  EXPECT_NEAR(cv(arrival_times(4000, 50.0, 0.25, 7)), 2.0, 0.2);
  EXPECT_EQ(arrival_times(5, std::numeric_limits<double>::infinity(), 1.0, 0), std::vector<double>(5, 0.0));
  EXPECT_EQ(arrival_times(50, 10.0, 1.0, 3), arrival_times(50, 10.0, 1.0, 3));
  EXPECT_THROW(arrival_times(5, 0.0, 1.0, 0), Error);
  EXPECT_THROW(arrival_times(5, 1.0, 0.0, 0), Error);
}

TEST(BenchServe, ShareGptSamplingFollowsVllm) {
  auto a = sample_sharegpt(kShareGpt, 8, tok(), 0);
  ASSERT_EQ(a.size(), 8u);
  for (const BenchPrompt& p : a) {
    EXPECT_NE(p.prompt, "A conversation with only one turn is skipped.");
    EXPECT_NE(p.prompt, "Hi");                                        // prompt under 4 tokens
    EXPECT_NE(p.prompt, "Say one word, any word you like, please.");  // output under 4 tokens
    EXPECT_EQ(p.prompt_len, int64_t(tok().encode(p.prompt, true).size()));
    EXPECT_GE(p.output_len, 4);
  }
  EXPECT_EQ(sample_sharegpt(kShareGpt, 8, tok(), 0)[3].prompt, a[3].prompt);  // seeded
  auto b = sample_sharegpt(kShareGpt, 8, tok(), 1);
  bool differs = false;
  for (size_t i = 0; i < 8; ++i) differs = differs || a[i].prompt != b[i].prompt;
  EXPECT_TRUE(differs) << "another seed, another order";
  // Oversampled when too few pass the filters (10 do).
  EXPECT_EQ(sample_sharegpt(kShareGpt, 25, tok(), 0).size(), 25u);
  auto fixed = sample_sharegpt(kShareGpt, 3, tok(), 0, 77);
  for (const BenchPrompt& p : fixed) EXPECT_EQ(p.output_len, 77);
  // Bad input names the file and the entry.
  const std::string bad = testing::TempDir() + "/bad_sharegpt.json";
  std::ofstream(bad) << R"([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}])";
  try {
    sample_sharegpt(bad, 2, tok(), 0);
    ADD_FAILURE() << "a turn without value must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.source(), bad);
    EXPECT_EQ(e.field(), "[0].conversations[1].value");
  }
  EXPECT_THROW(sample_sharegpt(testing::TempDir() + "/missing.json", 2, tok(), 0), Error);
}

TEST(BenchServe, RandomAndJsonlDatasets) {
  auto r = sample_random(20, 32, 8, 0.5, tok(), 3);
  ASSERT_EQ(r.size(), 20u);
  for (const BenchPrompt& p : r) {
    EXPECT_GE(p.output_len, 4);
    EXPECT_LE(p.output_len, 12);
    EXPECT_EQ(p.prompt_len, int64_t(tok().encode(p.prompt, true).size()));
    EXPECT_GT(p.prompt_len, 8);
  }
  EXPECT_EQ(sample_random(3, 32, 8, 0.5, tok(), 3)[1].prompt, r[1].prompt);
  EXPECT_THROW(sample_random(3, 32, 8, 1.0, tok(), 3), Error);
  const std::string path = testing::TempDir() + "/prompts.jsonl";
  std::ofstream(path)
      << "{\"prompt\": \"Hello there\", \"output_len\": 5}\n\n{\"prompt\": \"Bye\", \"output_len\": 2}\n";
  auto j = load_jsonl(path, 5, tok());
  ASSERT_EQ(j.size(), 5u);
  EXPECT_EQ(j[2].prompt, "Hello there");
  EXPECT_EQ(j[1].output_len, 2);
  std::ofstream(path) << "{\"prompt\": \"x\", \"output_len\": 0}\n";
  try {
    load_jsonl(path, 1, tok());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "line 1: output_len");
  }
}

// A whole run against `kite serve`: the report's token totals equal the
// server's own counters, every request completes, the concurrency cap holds.
TEST(BenchServe, RunAgainstKiteServeCountsWhatTheServerCounts) {
  server::test::Instance inst;
  ClientOptions c = client_for(inst, "kite-ref");
  c.ignore_eos = true;
  auto prompts = sample_sharegpt(kShareGpt, 12, tok(), 0, 6);
  auto more = sample_random(12, 24, 5, 0.3, tok(), 1);
  prompts.insert(prompts.end(), more.begin(), more.end());
  const std::string before = http_get(c.endpoint, "/metrics", "");
  RunOptions run;
  run.max_concurrency = 5;
  double duration = 0;
  auto results = run_requests(c, run, prompts, duration);
  const std::string after = http_get(c.endpoint, "/metrics", "");
  json m = compute_metrics(results, duration, ReportOptions{}, &tok());
  EXPECT_EQ(m["completed"], 24) << m["errors"].dump();
  EXPECT_EQ(m["failed"], 0);
  EXPECT_EQ(m["total_input_tokens"].get<double>(),
            metric(after, "vllm:prompt_tokens_total") - metric(before, "vllm:prompt_tokens_total"));
  EXPECT_EQ(m["total_output_tokens"].get<double>(),
            metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total"));
  EXPECT_EQ(
      m["total_output_tokens"], 12 * 6 + [&] {
        int64_t s = 0;
        for (size_t i = 12; i < prompts.size(); ++i) s += prompts[i].output_len;
        return s;
      }());
  for (const RequestResult& r : results) {
    EXPECT_TRUE(r.usage_reported);
    EXPECT_GT(r.ttft, 0);
    EXPECT_GE(r.latency, r.ttft);
    EXPECT_LE(int64_t(r.itl.size()) + 1, r.output_tokens) << "a chunk carries one token or more";
  }
  // At no instant were more than 5 requests in flight.
  for (const RequestResult& r : results) {
    int overlapping = 0;
    for (const RequestResult& o : results)
      if (o.start <= r.start + 1e-9 && r.start < o.start + o.latency) ++overlapping;
    EXPECT_LE(overlapping, 5);
  }
  EXPECT_GT(m["mean_tpot_ms"].get<double>(), 0);
  EXPECT_FALSE(throughput_over_time(results, 0.5).empty());

  // The chat route too.
  c.endpoint = client_for(inst, "kite-ref", "/v1/chat/completions").endpoint;
  std::vector<BenchPrompt> two(prompts.begin(), prompts.begin() + 2);
  results = run_requests(c, RunOptions{}, two, duration);
  for (const RequestResult& r : results) EXPECT_TRUE(r.success) << r.error;
}

// Requests are sent on their Poisson schedule (within a tolerance for a
// loaded 2-core CI machine), and the run lasts at least until the last one.
TEST(BenchServe, RequestRatePacing) {
  server::test::Instance inst;
  const ClientOptions c = client_for(inst, "kite-ref");
  std::vector<BenchPrompt> prompts(30, BenchPrompt{"The kernel scheduler", 4, 2});
  RunOptions run;
  run.request_rate = 20;
  run.seed = 5;
  double duration = 0;
  auto results = run_requests(c, run, prompts, duration);
  const auto planned = arrival_times(30, 20, 1.0, 5);
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_TRUE(results[i].success) << results[i].error;
    EXPECT_NEAR(results[i].start, planned[i], 0.1) << "request " << i;
  }
  EXPECT_GE(duration, planned.back());
}

TEST(BenchServe, ReadsTheServersGpuEnergyCounter) {
  server::ServerOptions so;
  so.gpu_energy_joules = []() -> std::optional<double> { return 4321.5; };
  server::test::Instance inst(so);
  const Endpoint at = parse_endpoint("http://127.0.0.1:" + std::to_string(inst.port()), "/v1/completions");
  EXPECT_DOUBLE_EQ(energy_joules(at, ""), 4321.5);
  server::test::Instance cpu;
  EXPECT_TRUE(std::isnan(
      energy_joules(parse_endpoint("http://127.0.0.1:" + std::to_string(cpu.port()), "/v1/completions"), "")));
}

// Failures are counted, never fatal: a server that refuses every request,
// and no server at all.
TEST(BenchServe, FailuresAreCountedNotFatal) {
  server::test::Instance inst;
  ClientOptions c = client_for(inst, "no-such-model");
  std::vector<BenchPrompt> prompts(4, BenchPrompt{"Hello", 2, 3});
  double duration = 0;
  auto results = run_requests(c, RunOptions{}, prompts, duration);
  json m = compute_metrics(results, duration, ReportOptions{}, &tok());
  EXPECT_EQ(m["completed"], 0);
  EXPECT_EQ(m["failed"], 4);
  EXPECT_NE(results[0].error.find("HTTP 404"), std::string::npos) << results[0].error;
  EXPECT_FALSE(format_report(m, ReportOptions{}).empty());

  c.endpoint.port = "1";  // nothing listens there
  results = run_requests(c, RunOptions{}, prompts, duration);
  for (const RequestResult& r : results) {
    EXPECT_FALSE(r.success);
    EXPECT_NE(r.error.find("connect"), std::string::npos) << r.error;
  }
}

}  // namespace
}  // namespace kite::bench
