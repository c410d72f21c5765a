#pragma once
// What a client asks of the engine and what it gets back, per request.
// Plain structs: the server (or the CLI) fills GenerationParams from its
// own input format; the engine never sees JSON.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "backend/ops/sampling_params.h"

namespace kite {

struct GenerationParams {
  SamplingParams sampling;                  // temperature, top-k/p, min-p, penalties, seed
  int64_t max_tokens = 16;                  // most tokens generated per sample; 0 (with prompt_logprobs):
                                            // score the prompt, generate nothing
  int64_t min_tokens = 0;                   // EOS and stop ids are masked until this many were generated
  std::vector<int32_t> stop_token_ids;      // end a sample (the id is kept in token_ids, not in text)
  std::vector<std::string> stop;            // end a sample when the text contains one of these
  bool include_stop_str_in_output = false;  // keep the matched stop string in the text
  bool ignore_eos = false;                  // do not stop at the model's EOS ids
  int32_t n = 1;                            // parallel samples sharing the prompt's KV blocks
  int32_t logprobs = -1;                    // -1: none; k >= 0: the chosen token's logprob plus the top k
  int32_t prompt_logprobs = -1;             // -1: none; k >= 0: for every prompt token after the first
  bool skip_special_tokens = true;          // in the returned text
  int32_t priority = 0;                     // lower runs sooner under the priority policy

  // Throws kite::Error(source, field, ...) on an out-of-range value.
  void validate(const std::string& source) const;
};

enum class FinishReason { None, Stop, Length, Abort };
const char* finish_reason_name(FinishReason r);  // "", "stop", "length", "abort"

// One position's log-probabilities (natural log, from the model's raw
// distribution before penalties and temperature, as vLLM returns them).
struct TokenLogprobs {
  int32_t token = 0;  // the chosen (or prompt) token
  float logprob = 0;
  int32_t rank = 0;                            // 1 = most likely
  std::vector<std::pair<int32_t, float>> top;  // the top k (token, logprob), most likely first
};

// What one sample produced since its last output.
struct SampleOutput {
  int32_t index = 0;                    // which of the n samples
  std::vector<int32_t> token_ids;       // new token ids
  std::string text;                     // new text (complete UTF-8; stop strings held back until decided)
  std::vector<TokenLogprobs> logprobs;  // one per new token when requested
  FinishReason finish = FinishReason::None;
  std::optional<int32_t> stop_token;  // the stop/EOS id that ended it
  std::string stop_string;            // the stop string that ended it
  int64_t num_tokens = 0;             // tokens generated so far by this sample
};

struct RequestMetrics {
  double arrival = 0;          // seconds, steady clock
  double first_scheduled = 0;  // 0 until scheduled
  double first_token = 0;      // 0 until the first token
  double last_token = 0;
  double finished = 0;
  std::vector<double> inter_token;  // seconds between consecutive tokens of sample 0
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;     // prompt tokens served by the prefix cache
  int64_t generated_tokens = 0;  // over all samples
  int64_t preemptions = 0;
};

// A step's news for one request: the samples that changed.
struct RequestOutput {
  std::string id;
  std::vector<SampleOutput> samples;
  // Sent once, with the first output: one entry per prompt token after the first.
  std::vector<TokenLogprobs> prompt_logprobs;
  bool finished = false;   // every sample has finished
  std::string error;       // set (with finished) when the request failed
  RequestMetrics metrics;  // filled in the final output
};

}  // namespace kite
