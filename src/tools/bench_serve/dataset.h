#pragma once
// The prompts of `kite bench serve`: vLLM's ShareGPT sampling, its random
// dataset, and a JSONL of {prompt, output_len}. Lengths are counted with the
// model's tokenizer, as vLLM counts them (BOS included in prompt lengths).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kite::bench {

struct BenchPrompt {
  std::string prompt;
  int64_t prompt_len = 0;  // tokens, as the server's tokenizer counts them
  int64_t output_len = 0;  // max_tokens asked for
};

// ShareGPT JSON (a list of {"conversations": [{"from", "value"}, ...]}):
// conversations of two turns or more; prompt = first turn, output length =
// the second turn's token count (or `fixed_output_len`); pairs with a prompt
// or output under 4 tokens, a prompt over 1024 or prompt + output over 2048
// are dropped; shuffled with `seed`; oversampled (seeded, with repeats)
// when fewer than `n` remain. kite::Error names the file and entry on bad
// input.
std::vector<BenchPrompt> sample_sharegpt(const std::string& path, int64_t n, const Tokenizer& tok, uint64_t seed,
                                         std::optional<int64_t> fixed_output_len = std::nullopt);

// vLLM's random dataset: input and output lengths uniform in
// [len * (1 - range_ratio), len * (1 + range_ratio)]; each prompt is the text
// of random non-special token ids (its length is re-measured after decoding).
std::vector<BenchPrompt> sample_random(int64_t n, int64_t input_len, int64_t output_len, double range_ratio,
                                       const Tokenizer& tok, uint64_t seed);

// One JSON object per line: {"prompt": "...", "output_len": N}. The first
// `n` lines (n <= 0: all), repeated in order when there are fewer.
std::vector<BenchPrompt> load_jsonl(const std::string& path, int64_t n, const Tokenizer& tok);

}  // namespace kite::bench
