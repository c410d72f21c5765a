#include "engine/request.h"

#include "core/error.h"

namespace kite {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
  }
  return "";
}

void GenerationParams::validate(const std::string& source) const {
  sampling.validate(source);
  if (max_tokens < 0 || (max_tokens == 0 && prompt_logprobs < 0))
    fail(source, "max_tokens", "{} is invalid; expected at least 1 (0 only with prompt_logprobs)", max_tokens);
  if (min_tokens < 0 || min_tokens > max_tokens)
    fail(source, "min_tokens", "{} is invalid; expected a value in [0, max_tokens = {}]", min_tokens, max_tokens);
  if (n < 1 || n > 128) fail(source, "n", "{} is invalid; expected 1 to 128 samples", n);
  if (logprobs < -1 || logprobs > 20) fail(source, "logprobs", "{} is invalid; expected 0 to 20 (or none)", logprobs);
  if (prompt_logprobs < -1 || prompt_logprobs > 20)
    fail(source, "prompt_logprobs", "{} is invalid; expected 0 to 20 (or none)", prompt_logprobs);
  for (const std::string& s : stop)
    if (s.empty()) fail(source, "stop", "an empty stop string would end every sample at once");
  for (int32_t t : stop_token_ids)
    if (t < 0) fail(source, "stop_token_ids", "{} is not a token id", t);
}

}  // namespace kite
