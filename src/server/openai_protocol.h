#pragma once
// The OpenAI API's JSON, both ways: request bodies of /v1/completions and
// /v1/chat/completions parsed and validated into the engine's plain
// GenerationParams (the engine never sees JSON), and the engine's outputs
// turned into responses and stream chunks in OpenAI's shapes (with vLLM's
// additions: stop_reason, top_k/min_p/repetition_penalty, ignore_eos ...).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "backend/ops/sampling_params.h"
#include "chat/chat_template.h"
#include "engine/request.h"
#include "tokenizer/tokenizer.h"

namespace kite::server {

using Json = nlohmann::json;

// An error answered to the client in OpenAI's shape:
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "", std::string code = "");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // invalid_request_error, authentication_error, rate_limit_error, server_error ...
  std::string type() const;
  // 429: seconds the client should wait (sent as Retry-After); 0 = none.
  int retry_after_s() const { return retry_after_s_; }
  ApiError& with_retry_after(int seconds) {
    retry_after_s_ = seconds;
    return *this;
  }

 private:
  int status_;
  int retry_after_s_ = 0;
  std::string param_;
  std::string code_;
};

Json error_json(const ApiError& e);

// What the server serves and the defaults it applies.
struct ModelInfo {
  std::string served_name;  // the `model` clients must send (or omit)
  std::string root;         // the path it was loaded from
  int64_t max_model_len = 0;
  int64_t created = 0;  // unix seconds, for /v1/models
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;  // null: /v1/chat/completions answers 400
  SamplingParams default_sampling;              // from generation_config.json, as vLLM
  int32_t max_logprobs = 20;
};

struct ParsedRequest {
  bool chat = false;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one engine request each
  std::vector<std::string> prompt_texts;      // the text of each prompt (completions' echo)
  std::vector<bool> prompt_from_ids;          // completions: the prompt was given as token ids
  GenerationParams params;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;
  int32_t logprobs = -1;  // completions: `logprobs`; chat: `top_logprobs` when `logprobs` is true; -1 = none
  std::string chat_echo;  // chat with echo: the last message's content, prepended to the reply
};

// The routes whose bodies parse_request_body reads.
enum class Endpoint { Completions, Chat, Tokenize, Detokenize };

// Parses a request body (400 if it is not JSON). The text of each number is
// still at hand here, so a number that a double cannot hold, and one where
// the endpoint wants an integer (max_tokens, n, seed, token ids ...) that is
// not integral or not within int64_t, are a 400 naming the parameter and
// quoting the number as the client wrote it.
Json parse_request_body(std::string_view text, Endpoint endpoint);
// The value of a JSON number that is an integer (or a float with an integral
// value) within int64_t; nullopt for anything else.
std::optional<int64_t> exact_int(const Json& v);

// Parse and validate a request body (already JSON). Throws ApiError (400 for
// invalid values, 404 for an unknown model). Tokenizes the prompts and
// applies the chat template; checks prompt + max_tokens against max_model_len.
ParsedRequest parse_completion_request(const Json& body, const ModelInfo& model);
ParsedRequest parse_chat_request(const Json& body, const ModelInfo& model);
// Renders a chat request's `messages` with the request's or the model's chat
// template (add_generation_prompt, continue_final_message,
// chat_template_kwargs, chat_template). last_assistant (optional) receives
// the final message's content when it is the assistant's.
std::string render_chat_prompt(const Json& body, const ModelInfo& model, std::string* last_assistant = nullptr);
// The `model` field: absent, or one of the served names (else 404).
void check_model_name(const Json& body, const ModelInfo& model);

// Builds responses and stream chunks from engine outputs for one API call
// (which may hold several prompts, each one engine request with n samples).
class ResponseBuilder {
 public:
  ResponseBuilder(const ModelInfo& model, const ParsedRequest& request, std::string id, int64_t created);
  const std::string& id() const { return id_; }

  // Streaming: the chunks to send for one engine output of prompt `prompt_index`.
  std::vector<Json> stream_chunks(size_t prompt_index, const RequestOutput& out);
  // Streaming, chat: the first chunk of every choice (role "assistant").
  std::vector<Json> chat_role_chunks() const;
  // Streaming with include_usage: the last chunk (no choices).
  Json usage_chunk() const;
  // Records finish reasons and usage of an output that is not sent (the
  // client of a stream went away).
  void note_output(size_t prompt_index, const RequestOutput& out);
  // Non-streaming: accumulate every output, then build the response.
  void add(size_t prompt_index, const RequestOutput& out);
  Json response() const;
  Json usage() const;
  // The finish reason of prompt `prompt_index`'s first sample so far.
  FinishReason finish_of(size_t prompt_index) const { return choices_[prompt_index * size_t(req_.params.n)].finish; }

 private:
  struct Choice {
    std::string text;
    std::vector<TokenLogprobs> logprobs;  // generated tokens' logprobs
    FinishReason finish = FinishReason::None;
    Json stop_reason;         // null, a stop string or a stop token id
    int64_t text_offset = 0;  // completions' logprobs.text_offset of the next token (code points)
    // Completions' logprobs: splits the generated ids into the pieces of the
    // text (primed with the prompt, as the engine's), made on first use.
    std::optional<IncrementalDetokenizer> detok;
    bool started = false;  // a chunk was sent (echo goes in the first)
    int64_t num_tokens = 0;
  };
  Choice& choice(size_t prompt_index, int32_t sample_index);
  Json finish_json(const Choice& c) const;
  // with_prompt: the echoed prompt's tokens first. Each token's text is its
  // piece of the returned text, and text_offset indexes it in code points.
  Json completion_logprobs(Choice& c, size_t prompt_index, const std::vector<TokenLogprobs>& lps,
                           bool with_prompt) const;
  Json chat_logprobs(const std::vector<TokenLogprobs>& lps) const;
  std::string token_text(int32_t id) const;

  const ModelInfo& model_;
  const ParsedRequest& req_;
  std::string id_;
  int64_t created_;
  std::vector<Choice> choices_;  // prompt_index * n + sample index
  std::vector<std::vector<TokenLogprobs>> prompt_logprobs_;
  std::vector<int64_t> prompt_tokens_, cached_tokens_;
  int32_t anchor_ = -1;      // a one-token word decoded before each logprob token (see token_text)
  std::string anchor_text_;  // its text
};

// The chat reply's token strings in logprobs: the token decoded alone.
// Logprobs of -inf are reported as -9999 (JSON has no infinities), as vLLM.
float finite_logprob(float lp);
// Unicode code points in UTF-8 text (what text_offset counts, as Python's len()).
int64_t utf8_length(std::string_view s);

}  // namespace kite::server
