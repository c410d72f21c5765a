#include "tools/bench_serve/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"

namespace kite::bench {

namespace {

using Json = nlohmann::json;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, what, "cannot open the file; check the path given to --dataset-path");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// A seeded shuffle that does not depend on the standard library's
// distribution implementations (so a seed gives the same order everywhere).
template <typename T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(rng() % i)]);
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return lo + int64_t(rng() % uint64_t(hi - lo + 1));
}

}  // namespace

std::vector<BenchPrompt> sample_sharegpt(const std::string& path, int64_t n, const Tokenizer& tok, uint64_t seed,
                                         std::optional<int64_t> fixed_output_len) {
  if (n < 1) fail("--num-prompts", "num_prompts", "{} is invalid; expected at least 1", n);
  Json doc = Json::parse(read_file(path, "sharegpt"), nullptr, false);
  if (doc.is_discarded()) fail(path, "sharegpt", "not valid JSON; expected a ShareGPT file (a list of conversations)");
  if (!doc.is_array()) fail(path, "sharegpt", "expected a JSON list of {{\"conversations\": [...]}} entries");
  std::vector<std::pair<std::string, std::string>> pairs;
  for (size_t i = 0; i < doc.size(); ++i) {
    const Json& e = doc[i];
    auto c = e.is_object() ? e.find("conversations") : e.end();
    if (!e.is_object() || c == e.end() || !c->is_array())
      fail(path, fmt::format("[{}].conversations", i), "missing or not a list");
    if (c->size() < 2) continue;
    auto turn = [&](size_t t) {
      const Json& m = (*c)[t];
      if (!m.is_object() || !m.contains("value") || !m["value"].is_string())
        fail(path, fmt::format("[{}].conversations[{}].value", i, t), "missing or not a string");
      return m["value"].get<std::string>();
    };
    pairs.push_back({turn(0), turn(1)});
  }
  std::mt19937_64 rng(seed);
  shuffle(pairs, rng);
  std::vector<BenchPrompt> out;
  for (const auto& [prompt, completion] : pairs) {
    if (int64_t(out.size()) >= n) break;
    const int64_t prompt_len = int64_t(tok.encode(prompt, true).size());
    const int64_t output_len = fixed_output_len ? *fixed_output_len : int64_t(tok.encode(completion, false).size());
    if (prompt_len < 4 || (!fixed_output_len && output_len < 4)) continue;  // too short
    if (prompt_len > 1024 || prompt_len + output_len > 2048) continue;      // too long
    out.push_back({prompt, prompt_len, output_len});
  }
  if (out.empty())
    fail(path, "sharegpt",
         "no conversation passes the length filters (prompt and output >= 4 tokens, prompt <= 1024, "
         "prompt + output <= 2048)");
  // Oversample (seeded, with repeats) when too few pairs pass.
  const size_t have = out.size();
  while (int64_t(out.size()) < n) out.push_back(out[size_t(rng() % have)]);
  return out;
}

std::vector<BenchPrompt> sample_random(int64_t n, int64_t input_len, int64_t output_len, double range_ratio,
                                       const Tokenizer& tok, uint64_t seed) {
  if (n < 1) fail("--num-prompts", "num_prompts", "{} is invalid; expected at least 1", n);
  if (input_len < 1) fail("--random-input-len", "random_input_len", "{} is invalid; expected at least 1", input_len);
  if (output_len < 1)
    fail("--random-output-len", "random_output_len", "{} is invalid; expected at least 1", output_len);
  if (!(range_ratio >= 0 && range_ratio < 1))
    fail("--random-range-ratio", "random_range_ratio", "{} is invalid; expected a value in [0, 1)", range_ratio);
  std::vector<int32_t> ordinary;  // non-special ids
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (!tok.is_special(id)) ordinary.push_back(id);
  if (ordinary.empty()) fail("--tokenizer", "vocab", "the tokenizer has no ordinary tokens to draw prompts from");
  std::mt19937_64 rng(seed);
  auto range = [&](int64_t len) {
    const int64_t lo = std::max<int64_t>(1, int64_t(std::floor(double(len) * (1 - range_ratio))));
    const int64_t hi = std::max(lo, int64_t(std::ceil(double(len) * (1 + range_ratio))));
    return uniform(rng, lo, hi);
  };
  std::vector<BenchPrompt> out;
  out.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in = range(input_len), gen = range(output_len);
    std::vector<int32_t> ids(static_cast<size_t>(in));
    for (auto& id : ids) id = ordinary[size_t(rng() % ordinary.size())];
    std::string text = tok.decode(ids, true);
    out.push_back({text, int64_t(tok.encode(text, true).size()), gen});
  }
  return out;
}

std::vector<BenchPrompt> load_jsonl(const std::string& path, int64_t n, const Tokenizer& tok) {
  std::istringstream lines(read_file(path, "jsonl"));
  std::string line;
  std::vector<BenchPrompt> out;
  for (int64_t no = 1; std::getline(lines, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json j = Json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(path, fmt::format("line {}", no), "not a JSON object");
    if (!j.contains("prompt") || !j["prompt"].is_string())
      fail(path, fmt::format("line {}: prompt", no), "missing or not a string");
    if (!j.contains("output_len") || !j["output_len"].is_number_integer() || j["output_len"].get<int64_t>() < 1)
      fail(path, fmt::format("line {}: output_len", no), "missing or not a positive integer");
    std::string p = j["prompt"].get<std::string>();
    const int64_t len = int64_t(tok.encode(p, true).size());
    out.push_back({std::move(p), len, j["output_len"].get<int64_t>()});
    if (n > 0 && int64_t(out.size()) >= n) break;
  }
  if (out.empty()) fail(path, "jsonl", "no prompts in the file");
  const size_t have = out.size();
  for (size_t i = 0; n > 0 && int64_t(out.size()) < n; ++i) out.push_back(out[i % have]);
  return out;
}

}  // namespace kite::bench
