// The kite binary end to end: output format, exit codes, one-line errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/mapped_file.h"
#include "model/generation.h"
#include "tokenizer/tokenizer.h"

namespace {

const std::string kKite = std::string(KITE_BINARY_DIR) + "/kite";
const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

struct Result {
  int status;
  std::string out, err;
};

Result run(const std::string& args, const std::string& stdin_text = "") {
  auto dir = std::filesystem::temp_directory_path() / ("kite_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string in = (dir / "in").string(), out = (dir / "out").string(), err = (dir / "err").string();
  std::ofstream(in) << stdin_text;
  int rc = std::system((kKite + " " + args + " <" + in + " >" + out + " 2>" + err).c_str());
  Result r{WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, kite::read_text_file(out), kite::read_text_file(err)};
  std::filesystem::remove_all(dir);
  return r;
}

TEST(Cli, TokenizePrintsIdsOnOneLine) {
  Result r = run("tokenize --model " + kModel, "It is a truth universally acknowledged, that");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "1 819 318 263 4971 469 4251 512 5778 1304 1827 7223 393\n");
  Result nobos =
      run("tokenize --no-bos --model " + kModel + "/tokenizer.model", "It is a truth universally acknowledged, that");
  ASSERT_EQ(nobos.status, 0) << nobos.err;
  EXPECT_EQ(nobos.out, "819 318 263 4971 469 4251 512 5778 1304 1827 7223 393\n");
}

TEST(Cli, GenerateStreamsTheGreedyReference) {
  auto ref = nlohmann::json::parse(kite::read_text_file(kModel + "/reference.json"));
  const auto& g = ref["greedy"][1];
  Result r = run("generate --model " + kModel + " --prompt '" + g["prompt"].get<std::string>() + "' --max-tokens 48");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, g["text"].get<std::string>() + "\n");
  EXPECT_NE(r.err.find("tok/s"), std::string::npos);
}

TEST(Cli, GenerateTensorParallelOnCpuRanksGivesTheReference) {
  // Two CPU ranks (threads, local all-reduce) through the engine: HF's greedy text.
  auto ref = nlohmann::json::parse(kite::read_text_file(kModel + "/reference.json"));
  const auto& g = ref["greedy"][1];
  Result r = run("generate --tensor-parallel-size 2 --model " + kModel + " --prompt '" +
                 g["prompt"].get<std::string>() + "' --max-tokens 48");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, g["text"].get<std::string>() + "\n");
  // kite-ref's MLP (1024) does not split over 3 ranks; --tp 0 is no size.
  Result bad = run("generate --tp 3 --model " + kModel + " --prompt hi");
  EXPECT_EQ(bad.status, 2) << bad.err;
  EXPECT_NE(bad.err.find("intermediate_size"), std::string::npos) << bad.err;
  EXPECT_EQ(run("generate --tp 0 --model " + kModel + " --prompt hi").status, 2);
}

TEST(Cli, GenerateOverTwoNodeProcesses) {
  // Two kite processes on this machine as nodes 0 and 1 of a CPU job: node 1
  // serves node 0's steps and exits 0 when node 0 is done; node 0 prints HF's
  // greedy text.
  auto ref = nlohmann::json::parse(kite::read_text_file(kModel + "/reference.json"));
  const auto& g = ref["greedy"][1];
  const int port = 20000 + int(::getpid() % 20000);
  const std::string common = " --tp 2 --nnodes 2 --master-port " + std::to_string(port) + " --model " + kModel +
                             " --prompt '" + g["prompt"].get<std::string>() + "' --max-tokens 48";
  auto dir = std::filesystem::temp_directory_path() / ("kite_node1_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string err1 = (dir / "err").string();
  const std::string node1 = kKite + " generate --node-rank 1" + common + " >/dev/null 2>" + err1 + " & echo $!";
  FILE* p = ::popen(node1.c_str(), "r");
  ASSERT_NE(p, nullptr);
  int pid = 0;
  ASSERT_EQ(std::fscanf(p, "%d", &pid), 1);
  ::pclose(p);
  Result r = run("generate --node-rank 0" + common);
  // Node 1 says so on stderr as it exits (it is not our child: poll its log).
  bool served = false;
  for (int i = 0; i < 300 && !served; ++i) {
    served = kite::read_text_file(err1).find("served node 0") != std::string::npos;
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!served) ::kill(pid, SIGKILL);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, g["text"].get<std::string>() + "\n");
  EXPECT_TRUE(served) << kite::read_text_file(err1);
  std::filesystem::remove_all(dir);
}

TEST(Cli, ChatUsesTheModelsTemplate) {
  // reference.json's chat[0] is "Hello!" rendered by HF with the model's template.
  auto ref = nlohmann::json::parse(kite::read_text_file(kModel + "/reference.json"));
  std::vector<int32_t> ids = ref["chat"][0]["ids"].get<std::vector<int32_t>>();
  auto model = kite::load_model(kModel);
  auto tok = kite::Tokenizer::load(kModel);
  kite::GenerateOptions opt;
  opt.max_tokens = 12;
  opt.sampling.temperature = 0;
  opt.stop_ids = {2};
  std::vector<int32_t> all = ids;
  kite::generate(*model, ids, opt, [&](int32_t t) {
    if (t != 2) all.push_back(t);
    return true;
  });
  std::string expected = tok->decode(all).substr(tok->decode(ids).size());
  Result r = run("generate --chat --model " + kModel + " --prompt 'Hello!' --max-tokens 12");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, expected + "\n");
}

TEST(Cli, PplPrintsValueLast) {
  Result r =
      run("ppl -q --model " + kModel + " --text " + std::string(KITE_SHARED_DIR) + "/text/valid/shakespeare.txt");
  ASSERT_EQ(r.status, 0) << r.err;
  auto pos = r.out.rfind("ppl: ");
  ASSERT_NE(pos, std::string::npos);
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NEAR(std::stod(r.out.substr(pos + 5)), 30.0677, 30.0677 * 0.005);
}

TEST(Cli, BadInputIsOneLineAndExitTwo) {
  for (const std::string& args :
       {std::string("generate --model /nonexistent --prompt hi"), std::string("tokenize --model /nonexistent"),
        std::string("ppl --model ") + kModel + " --text /nonexistent.txt",
        std::string("generate --model ") + kModel + " --prompt hi --top-p 0",
        std::string("generate --model ") + kModel + "/tokenizer.json --prompt hi", std::string("generate"),
        std::string("generate --model ") + kModel + " --prompt hi --quantization int3", std::string("bogus-command")}) {
    Result r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  Result r = run("generate --model /nonexistent --prompt hi");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos) << r.err;
}

TEST(Cli, GenerateStopsAtAStopString) {
  auto ref = nlohmann::json::parse(kite::read_text_file(kModel + "/reference.json"));
  const auto& g = ref["greedy"][1];
  const std::string text = g["text"].get<std::string>();
  const std::string stop = text.substr(text.size() / 2, 5);
  Result r = run("generate --model " + kModel + " --prompt '" + g["prompt"].get<std::string>() +
                 "' --max-tokens 48 --stop '" + stop + "'");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, text.substr(0, text.find(stop)) + "\n");
}

TEST(Cli, BenchThroughputRunsTheBatchedEngine) {
  Result r = run("bench throughput --model " + kModel + " --num-prompts 6 --input-len 20 --output-len 5 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["num_prompts"], 6);
  EXPECT_EQ(j["prompt_tokens"], 120);
  EXPECT_EQ(j["output_tokens"], 30);
  EXPECT_GT(j["output_tokens_per_s"].get<double>(), 0);
  EXPECT_EQ(j["steps"], 5);  // one prefill step of 120 tokens, then 4 decode steps of 6
  auto dir = std::filesystem::temp_directory_path() / ("kite_ds_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "ds.json") << R"(["It was", {"prompt": "The kernel"}])";
  Result d = run("bench throughput --model " + kModel + " --dataset " + (dir / "ds.json").string() + " --output-len 4");
  EXPECT_EQ(d.status, 0) << d.err;
  EXPECT_NE(d.out.find("| 2 |"), std::string::npos) << d.out;
  std::ofstream(dir / "bad.json") << R"([42])";
  Result bad = run("bench throughput --model " + kModel + " --dataset " + (dir / "bad.json").string());
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("bad.json"), std::string::npos) << bad.err;
  std::filesystem::remove_all(dir);
}

TEST(Cli, QuantizeWritesACheckpointThatPplAndGenerateLoad) {
  auto dir = std::filesystem::temp_directory_path() / ("kite_cli_q_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  Result q = run("quantize --model " + kModel + " --out " + dir.string() + " --method int8");
  ASSERT_EQ(q.status, 0) << q.err;
  EXPECT_TRUE(std::filesystem::exists(dir / "quantization_report.json"));
  auto text = std::filesystem::temp_directory_path() / ("kite_cli_q_text_" + std::to_string(::getpid()));
  std::ofstream(text) << kite::read_text_file(std::string(KITE_SHARED_DIR) + "/text/valid/jargon.txt").substr(0, 3000);
  Result p = run("ppl --model " + dir.string() + " --text " + text.string() + " --kl-base " + kModel + " -q");
  ASSERT_EQ(p.status, 0) << p.err;
  EXPECT_NE(p.out.find("mean KLD: "), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("same top token: "), std::string::npos) << p.out;
  EXPECT_EQ(p.out.rfind("ppl: "), p.out.rfind('\n', p.out.size() - 2) + 1) << "ppl must be the last line";
  Result g = run("generate --model " + dir.string() + " --prompt 'The kernel' --max-tokens 8");
  EXPECT_EQ(g.status, 0) << g.err;
  EXPECT_GT(g.out.size(), 4u);
  // A quantized model is not quantized again.
  Result again = run("quantize --model " + dir.string() + " --out " + dir.string() + "2 --method int4");
  EXPECT_EQ(again.status, 2);
  EXPECT_NE(again.err.find("already quantized"), std::string::npos) << again.err;
  EXPECT_FALSE(std::filesystem::exists(dir.string() + "2"));
  std::filesystem::remove_all(dir);
  std::filesystem::remove(text);
}

TEST(Cli, QuantizeBadInputIsOneLineExitTwoAndLeavesNothing) {
  auto tmp = std::filesystem::temp_directory_path() / ("kite_cli_qbad_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp);
  std::ofstream(tmp / "empty.txt") << "  \n";
  std::ofstream(tmp / "bad.yaml") << "\"*.down_proj\": {bits: 8}\nlm_head: : bad\n";
  const std::string out = (tmp / "out").string();
  const std::string base = "quantize --model " + kModel + " --out " + out + " ";
  struct Case {
    std::string args, must_mention;
  };
  for (const Case& c : {Case{"--method int3", "int3"}, Case{"--method gptq --bits 3 --calib x", "bits"},
                        Case{"--method int4 --group-size 100", "group_size"}, Case{"--method gptq", "--calib"},
                        Case{"--method gptq --calib /nonexistent.txt", "/nonexistent.txt"},
                        Case{"--method awq --calib " + (tmp / "empty.txt").string(), "empty"},
                        Case{"--method int4 --overrides " + (tmp / "bad.yaml").string(), "line 2"}}) {
    Result r = run(base + c.args);
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.must_mention), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.args << " left an output directory";
    for (const auto& e : std::filesystem::directory_iterator(tmp))
      EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << c.args;
  }
  std::filesystem::remove_all(tmp);
}

TEST(Cli, HelpDescribesEveryCommand) {
  Result r = run("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* cmd : {"generate", "tokenize", "ppl", "bench", "quantize"})
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  Result g = run("generate --help");
  for (const char* flag : {"--top-p", "--top-k", "--min-p", "--seed", "--chat", "--max-tokens", "--temperature"})
    EXPECT_NE(g.out.find(flag), std::string::npos) << flag;
}

}  // namespace

TEST(Cli, MakeModelWritesALoadableRandomCheckpoint) {
  auto dir = std::filesystem::temp_directory_path() / ("kite_make_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  Result r = run("make-model --shape tiny --random --dtype bf16 --shard-gb 0.001 " + dir.string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));  // several shards
  auto model = kite::load_model(dir.string());
  EXPECT_EQ(model->config().hidden_size, 256);
  EXPECT_EQ(model->config().num_layers, 2);
  EXPECT_EQ(model->config().num_kv_heads, 2);
  // Deterministic: the same seed gives the same bytes.
  auto dir2 = dir.string() + "_2";
  std::filesystem::remove_all(dir2);
  ASSERT_EQ(run("make-model --shape tiny --random --dtype bf16 --shard-gb 0.001 " + dir2).status, 0);
  auto files = [](const std::filesystem::path& d) {
    std::vector<std::string> v;
    for (auto& e : std::filesystem::directory_iterator(d))
      if (e.path().extension() == ".safetensors") v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  };
  ASSERT_EQ(files(dir), files(dir2));
  for (const auto& f : files(dir))
    EXPECT_EQ(kite::read_text_file((dir / f).string()), kite::read_text_file(dir2 + "/" + f)) << f;
  // A random model generates from token ids without a tokenizer.
  Result b = run("bench throughput --model " + dir.string() + " --num-prompts 2 --input-len 8 --output-len 4");
  EXPECT_EQ(b.status, 0) << b.err;
  Result bad = run("make-model --shape nope --random " + dir.string() + "_3");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("llama3-8b"), std::string::npos) << bad.err;
  Result exists = run("make-model --shape tiny --random " + dir.string());
  EXPECT_EQ(exists.status, 2);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

namespace {
// Starts `kite serve` on kite-ref on a free port; returns its pid and port.
std::pair<pid_t, int> start_serve(const std::string& log) {
  const std::string cmd = kKite + " serve --model " + kModel +
                          " --host 127.0.0.1 --port 0 --served-model-name kite-ref --max-model-len 1024 2>" + log +
                          " & echo $!";
  FILE* p = popen(cmd.c_str(), "r");
  int pid = 0;
  if (std::fscanf(p, "%d", &pid) != 1) pid = 0;
  pclose(p);
  for (int i = 0; i < 600; ++i) {
    const std::string text = std::filesystem::exists(log) ? kite::read_text_file(log) : std::string();
    const size_t at = text.find("http://127.0.0.1:");
    if (at != std::string::npos) {
      int port = std::atoi(text.c_str() + at + 17);
      if (port > 0) return {pid_t(pid), port};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return {pid_t(pid), 0};
}
}  // namespace

TEST(Cli, BenchServeWritesVllmKeysAgainstKiteServe) {
  auto dir = std::filesystem::temp_directory_path() / ("kite_bench_serve_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto [pid, port] = start_serve((dir / "serve.log").string());
  ASSERT_GT(port, 0) << kite::read_text_file((dir / "serve.log").string());
  Result r = run("bench serve --port " + std::to_string(port) + " --model kite-ref --tokenizer " + kModel +
                 " --dataset-name sharegpt --dataset-path " + KITE_FIXTURES_DIR +
                 "/bench/sharegpt_small.json --num-prompts 6 --sharegpt-output-len 5 --ignore-eos --request-rate 50"
                 " --metric-percentiles 50,99 --goodput ttft:60000 --save-result --no-plots --disable-tqdm"
                 " --result-dir " +
                 dir.string() + " --result-filename r.json");
  ::kill(pid, SIGTERM);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Successful requests:"), std::string::npos) << r.out;
  std::ifstream f(dir / "r.json");
  ASSERT_TRUE(f.good()) << r.err;
  nlohmann::json j = nlohmann::json::parse(f);
  for (const char* key : {"duration",
                          "completed",
                          "total_input_tokens",
                          "total_output_tokens",
                          "request_throughput",
                          "request_goodput",
                          "output_throughput",
                          "total_token_throughput",
                          "mean_ttft_ms",
                          "median_ttft_ms",
                          "p99_ttft_ms",
                          "p50_ttft_ms",
                          "mean_tpot_ms",
                          "median_tpot_ms",
                          "p99_tpot_ms",
                          "mean_itl_ms",
                          "median_itl_ms",
                          "p99_itl_ms",
                          "input_lens",
                          "output_lens",
                          "ttfts",
                          "itls",
                          "errors",
                          "generated_texts",
                          "date",
                          "model_id",
                          "num_prompts",
                          "request_rate"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["completed"], 6);
  EXPECT_EQ(j["total_output_tokens"], 30);
  EXPECT_EQ(j["request_rate"], 50.0);
  // Bad flags: one line naming the flag, exit 2, nothing written.
  for (const std::string& bad :
       {std::string("bench serve --model kite-ref --tokenizer /nonexistent"),
        std::string("bench serve --model kite-ref --tokenizer ") + kModel + " --request-rate fast",
        std::string("bench serve --model kite-ref --tokenizer ") + kModel + " --dataset-name sharegpt",
        std::string("bench serve --model kite-ref --tokenizer ") + kModel + " --base-url https://x:1",
        std::string("bench serve --model kite-ref --tokenizer ") + kModel + " --goodput ttft"}) {
    Result b = run(bad);
    EXPECT_EQ(b.status, 2) << bad << "\n" << b.err;
    EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << bad << "\n" << b.err;
  }
  std::filesystem::remove_all(dir);
}
