// Tokenizer loading: a byte-level BPE tokenizer.json of 262,144 entries and
// as many merges (the size of Gemma 3's), generated deterministically, then
// Tokenizer::load on it: parse, vocabulary index, merges table, added
// tokens, decode tables. Also the real tokenizers of ../shared when present.
// Target: under 0.3 s for the 262k file on a 2-core machine.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "tokenizer/tokenizer.h"

namespace {

// GPT-2's byte -> printable code point map (printable bytes map to
// themselves, the rest to 256, 257, ... in byte order), as UTF-8.
std::vector<std::string> byte_alphabet() {
  std::vector<int> cps(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) cps[size_t(b)] = b;
  int next = 256;
  for (int& cp : cps)
    if (cp < 0) cp = next++;
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

const std::string& big_tokenizer() {
  static const std::string path = [] {
    const std::string p =
        std::filesystem::temp_directory_path() / ("kite_tok262k_" + std::to_string(getpid()) + ".json");
    std::mt19937_64 rng(42);
    std::vector<std::string> alpha = byte_alphabet(), toks = alpha;
    std::set<std::string> seen(alpha.begin(), alpha.end());
    nlohmann::json merges = nlohmann::json::array();
    while (toks.size() < 262144 - 64) {
      const std::string& a = toks[rng() % toks.size()];
      const std::string& b = alpha[rng() % alpha.size()];
      if (a.size() + b.size() > 24) continue;
      std::string m = a + b;
      if (!seen.insert(m).second) continue;
      merges.push_back(a + " " + b);
      toks.push_back(std::move(m));
    }
    nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
    for (size_t i = 0; i < toks.size(); ++i) vocab[toks[i]] = i;
    for (int i = 0; i < 64; ++i)
      added.push_back({{"id", toks.size() + size_t(i)},
                       {"content", "<special_" + std::to_string(i) + ">"},
                       {"special", true},
                       {"normalized", false}});
    nlohmann::json j = {{"added_tokens", added},
                        {"normalizer", nullptr},
                        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                        {"decoder", {{"type", "ByteLevel"}}},
                        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
    std::ofstream(p) << j.dump();
    return p;
  }();
  return path;
}

void BM_Load262kTokenizerJson(benchmark::State& state) {
  const std::string& path = big_tokenizer();
  for (auto _ : state) {
    auto tok = kite::Tokenizer::load(path);
    benchmark::DoNotOptimize(tok.get());
  }
  state.counters["MB"] = double(std::filesystem::file_size(path)) / 1e6;
}
BENCHMARK(BM_Load262kTokenizerJson)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_LoadSharedTokenizer(benchmark::State& state, const char* rel) {
  const std::string path = std::string(KITE_SHARED_DIR) + rel;
  if (!std::filesystem::exists(path)) {
    state.SkipWithError("not in ../shared");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(kite::Tokenizer::load(path).get());
}
BENCHMARK_CAPTURE(BM_LoadSharedTokenizer, smollm2_49k, "/tokenizers/smollm2/tokenizer.json")
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_LoadSharedTokenizer, llama2_spm_32k, "/tokenizers/llama2/tokenizer.model")
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
