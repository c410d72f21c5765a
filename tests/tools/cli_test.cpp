// The kite binary end to end: output format, exit codes, one-line errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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
        std::string("bogus-command")}) {
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

TEST(Cli, HelpDescribesEveryCommand) {
  Result r = run("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* cmd : {"generate", "tokenize", "ppl", "bench"}) EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  Result g = run("generate --help");
  for (const char* flag : {"--top-p", "--top-k", "--min-p", "--seed", "--chat", "--max-tokens", "--temperature"})
    EXPECT_NE(g.out.find(flag), std::string::npos) << flag;
}

}  // namespace
