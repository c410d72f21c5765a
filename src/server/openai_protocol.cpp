#include "server/openai_protocol.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace kite::server {

// ---- errors -----------------------------------------------------------------

ApiError::ApiError(int status, std::string message, std::string param, std::string code)
    : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), code_(std::move(code)) {}

std::string ApiError::type() const {
  switch (status_) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status_ >= 500 ? "server_error" : "invalid_request_error";
  }
}

Json error_json(const ApiError& e) {
  Json err = {{"message", e.what()}, {"type", e.type()}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param().empty()) err["param"] = e.param();
  if (!e.code().empty()) err["code"] = e.code();
  return Json{{"error", err}};
}

float finite_logprob(float lp) { return std::isfinite(lp) ? lp : -9999.0f; }

// ---- request bodies ------------------------------------------------------------

std::optional<int64_t> exact_int(const Json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return int64_t(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && d >= -0x1p63 && d < 0x1p63) return int64_t(d);
  }
  return std::nullopt;
}

namespace {

// The top-level fields whose values (or, for arrays, elements at any depth)
// must be integers.
const std::vector<std::string_view>& integer_fields(Endpoint e) {
  static const std::vector<std::string_view> completions = {
      "max_tokens", "n",        "best_of",         "top_k",          "seed",  "logprobs",
      "min_tokens", "priority", "prompt_logprobs", "stop_token_ids", "prompt"};
  static const std::vector<std::string_view> chat = {
      "max_tokens", "max_completion_tokens", "n",        "best_of",         "top_k",         "seed",
      "min_tokens", "top_logprobs",          "priority", "prompt_logprobs", "stop_token_ids"};
  static const std::vector<std::string_view> tokenize = {};
  static const std::vector<std::string_view> detokenize = {"tokens"};
  switch (e) {
    case Endpoint::Completions: return completions;
    case Endpoint::Chat: return chat;
    case Endpoint::Tokenize: return tokenize;
    case Endpoint::Detokenize: return detokenize;
  }
  return tokenize;
}

// nlohmann's DOM builder, plus the path of the value being read so that a
// number can be checked while its text is known.
class BodyParser {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  BodyParser(Json& root, const std::vector<std::string_view>& ints) : dom_(root, true), ints_(ints) {}

  bool null() { return value(dom_.null()); }
  bool boolean(bool v) { return value(dom_.boolean(v)); }
  bool number_integer(number_integer_t v) { return value(dom_.number_integer(v)); }
  bool number_unsigned(number_unsigned_t v) {
    // (JSON allows no leading zeros or '+': the text is the number's digits.)
    if (v > number_unsigned_t(std::numeric_limits<int64_t>::max()) && in_integer_field())
      out_of_range(std::to_string(v));
    return value(dom_.number_unsigned(v));
  }
  bool number_float(number_float_t v, const string_t& text) {
    if (in_integer_field()) {
      if (std::floor(v) != v) not_integral(text);
      if (!(v >= -0x1p63 && v < 0x1p63)) out_of_range(text);
    }
    return value(dom_.number_float(v, text));
  }
  bool string(string_t& v) { return value(dom_.string(v)); }
  bool binary(binary_t& v) { return value(dom_.binary(v)); }
  bool start_object(std::size_t n) {
    frames_.push_back({false, 0, {}});
    return dom_.start_object(n);
  }
  bool key(string_t& k) {
    frames_.back().key = k;
    return dom_.key(k);
  }
  bool end_object() {
    frames_.pop_back();
    return value(dom_.end_object());
  }
  bool start_array(std::size_t n) {
    frames_.push_back({true, 0, {}});
    return dom_.start_array(n);
  }
  bool end_array() {
    frames_.pop_back();
    return value(dom_.end_array());
  }
  template <class Exception>
  bool parse_error(std::size_t, const std::string& token, const Exception& ex) {
    // 406: a number too large for a double (1e400).
    if (ex.id == 406) {
      if (in_integer_field()) out_of_range(token);
      const std::string p = path();
      throw ApiError(400,
                     p.empty() ? fmt::format("the request body is {}, which is out of range for a number", token)
                               : fmt::format("'{}' is {}, which is out of range for a number", p, token),
                     p);
    }
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", ex.what()));
  }

 private:
  struct Frame {
    bool array;
    size_t index;     // arrays: the element being read
    std::string key;  // objects: the key being read
  };

  // A value ended: the enclosing array moves on to its next element.
  bool value(bool ok) {
    if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
    return ok;
  }
  std::string top_key() const { return frames_.empty() || frames_[0].array ? "" : frames_[0].key; }
  bool in_integer_field() const {
    const std::string k = top_key();
    if (k.empty()) return false;
    for (std::string_view f : ints_)
      if (f == k) return true;
    return false;
  }
  // e.g. prompt[1][3], chat_template_kwargs.depth
  std::string path() const {
    std::string p;
    for (const Frame& f : frames_) {
      if (f.array)
        p += fmt::format("[{}]", f.index);
      else
        p += (p.empty() ? "" : ".") + f.key;
    }
    return p;
  }
  [[noreturn]] void not_integral(const std::string& text) const {
    throw ApiError(400, fmt::format("'{}' is {}; expected an integer", path(), text), top_key());
  }
  [[noreturn]] void out_of_range(const std::string& text) const {
    throw ApiError(400,
                   fmt::format("'{}' is {}; expected an integer from {} to {}", path(), text,
                               std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()),
                   top_key());
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  const std::vector<std::string_view>& ints_;
  std::vector<Frame> frames_;
};

}  // namespace

Json parse_request_body(std::string_view text, Endpoint endpoint) {
  Json root;
  BodyParser parser(root, integer_fields(endpoint));
  Json::sax_parse(text, &parser);
  return root;
}

int64_t utf8_length(std::string_view s) {
  int64_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

// ---- typed field access -------------------------------------------------------

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

const Json* field(const Json& b, const char* key) {
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const Json& b, const char* key) {
  const Json* v = field(b, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(key, fmt::format("'{}' must be a number, got {}", key, v->type_name()));
  return v->get<double>();
}

std::optional<int64_t> get_int(const Json& b, const char* key) {
  const Json* v = field(b, key);
  if (!v) return std::nullopt;
  if (auto i = exact_int(*v)) return i;
  bad(key, fmt::format("'{}' must be an integer, got {}", key, v->is_number() ? v->dump() : v->type_name()));
}

std::optional<bool> get_bool(const Json& b, const char* key) {
  const Json* v = field(b, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(key, fmt::format("'{}' must be true or false, got {}", key, v->type_name()));
  return v->get<bool>();
}

std::optional<std::string> get_string(const Json& b, const char* key) {
  const Json* v = field(b, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad(key, fmt::format("'{}' must be a string, got {}", key, v->type_name()));
  return v->get<std::string>();
}

int32_t checked_i32(int64_t v, const char* key, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) bad(key, fmt::format("'{}' is {}; expected {} to {}", key, v, lo, hi));
  return int32_t(v);
}

// Fields that OpenAI defines but Kite does not implement: refused rather than
// silently ignored when they would change the result.
void refuse_unsupported(const Json& b) {
  if (const Json* v = field(b, "logit_bias"); v && !(v->is_object() && v->empty()))
    bad("logit_bias", "'logit_bias' is not supported by this server; remove it");
  if (const Json* v = field(b, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    bad("suffix", "'suffix' (insertion) is not supported by this server; remove it");
  if (const Json* v = field(b, "response_format")) {
    if (!v->is_object() || v->value("type", "text") != "text")
      bad("response_format", "only response_format {\"type\": \"text\"} is supported by this server");
  }
  if (const Json* v = field(b, "tools"); v && !(v->is_array() && v->empty())) {
    const Json* choice = field(b, "tool_choice");
    if (!(choice && choice->is_string() && choice->get<std::string>() == "none"))
      bad("tools", "tool calling is not supported by this server; remove 'tools' (or set tool_choice \"none\")");
  }
  if (auto best_of = get_int(b, "best_of")) {
    int64_t n = get_int(b, "n").value_or(1);
    if (*best_of != n) bad("best_of", "'best_of' other than n is not supported; remove it");
  }
}

// Fills params from the fields both endpoints share.
void parse_sampling(const Json& b, const ModelInfo& m, ParsedRequest& r) {
  GenerationParams& p = r.params;
  p.sampling = m.default_sampling;
  if (auto v = get_number(b, "temperature")) p.sampling.temperature = float(*v);
  if (auto v = get_number(b, "top_p")) p.sampling.top_p = float(*v);
  if (auto v = get_int(b, "top_k"))  // its range: SamplingParams::validate below
    p.sampling.top_k =
        checked_i32(*v, "top_k", std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
  if (auto v = get_number(b, "min_p")) p.sampling.min_p = float(*v);
  if (auto v = get_number(b, "presence_penalty")) p.sampling.presence_penalty = float(*v);
  if (auto v = get_number(b, "frequency_penalty")) p.sampling.frequency_penalty = float(*v);
  if (auto v = get_number(b, "repetition_penalty")) p.sampling.repetition_penalty = float(*v);
  if (auto v = get_int(b, "seed")) p.sampling.seed = uint64_t(*v);
  if (auto v = get_int(b, "n")) p.n = checked_i32(*v, "n", 1, 128);
  if (auto v = get_int(b, "min_tokens")) p.min_tokens = *v;
  if (auto v = get_bool(b, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = get_bool(b, "skip_special_tokens")) p.skip_special_tokens = *v;
  if (auto v = get_bool(b, "include_stop_str_in_output")) p.include_stop_str_in_output = *v;
  if (auto v = get_int(b, "priority")) p.priority = checked_i32(*v, "priority", -1000000, 1000000);
  if (const Json* v = field(b, "stop")) {
    if (v->is_string()) {
      p.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const Json& s : *v) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings");
    }
    for (const std::string& s : p.stop)
      if (s.empty()) bad("stop", "'stop' holds an empty string, which would end every reply at once");
  }
  if (const Json* v = field(b, "stop_token_ids")) {
    if (!v->is_array()) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    for (const Json& t : *v) {
      auto id = exact_int(t);
      if (!id) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
      p.stop_token_ids.push_back(checked_i32(*id, "stop_token_ids", 0, std::numeric_limits<int32_t>::max()));
    }
  }
  if (auto v = get_string(b, "user"); v && v->size() > 4096) bad("user", "'user' is longer than 4096 characters");
  if (auto v = get_bool(b, "stream")) r.stream = *v;
  if (const Json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
  }
  if (auto v = get_int(b, "prompt_logprobs")) p.prompt_logprobs = checked_i32(*v, "prompt_logprobs", 0, m.max_logprobs);
  try {
    p.sampling.validate("");
  } catch (const Error& e) {
    bad(e.field(), e.what());
  }
  if (p.min_tokens < 0) bad("min_tokens", fmt::format("'min_tokens' is {}; expected at least 0", p.min_tokens));
}

// max_tokens against the context: explicit values are checked, a missing one
// defaults to `fallback` (or all the room left when fallback is 0).
void resolve_max_tokens(const Json& b, const ModelInfo& m, ParsedRequest& r, const char* key, int64_t fallback) {
  std::optional<int64_t> mt = get_int(b, key);
  const char* used = key;
  if (!mt && std::string(key) == "max_completion_tokens") {
    mt = get_int(b, "max_tokens");
    used = "max_tokens";
  }
  // 0 with echo (completions) scores the prompt and generates nothing, as
  // lm-evaluation-harness asks for loglikelihoods.
  const bool score_only = mt && *mt == 0 && r.echo && !r.chat;
  if (mt && *mt < 1 && !score_only)
    bad(used,
        fmt::format("'{}' is {}; expected at least 1{}", used, *mt, r.chat ? "" : " (0 only with \"echo\": true)"));
  if (score_only) r.params.prompt_logprobs = std::max(r.params.prompt_logprobs, 0);  // what the engine finishes on
  int64_t longest = 0;
  for (const auto& p : r.prompts) longest = std::max<int64_t>(longest, int64_t(p.size()));
  if (longest > m.max_model_len || (longest == m.max_model_len && !score_only))
    bad(r.chat ? "messages" : "prompt",
        fmt::format("This model's maximum context length is {} tokens. However, your prompt has {} tokens, leaving "
                    "no room to generate; shorten the prompt.",
                    m.max_model_len, longest));
  if (mt) {
    if (longest + *mt > m.max_model_len)
      bad(used, fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens ({} "
                            "in the prompt, {} for the completion). Please reduce the prompt or '{}'.",
                            m.max_model_len, longest + *mt, longest, *mt, used));
    r.params.max_tokens = *mt;
  } else {
    const int64_t room = m.max_model_len - longest;
    r.params.max_tokens = fallback > 0 ? std::min(fallback, room) : room;
  }
  if (r.params.min_tokens > r.params.max_tokens)
    bad("min_tokens",
        fmt::format("'min_tokens' ({}) is larger than max_tokens ({})", r.params.min_tokens, r.params.max_tokens));
}

std::vector<int32_t> token_array(const Json& a, const char* key, int32_t vocab) {
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (const Json& t : a) {
    auto id = exact_int(t);
    if (!id) bad(key, fmt::format("'{}' token arrays must hold integers", key));
    const int64_t v = *id;
    if (v < 0 || v >= vocab) bad(key, fmt::format("token id {} is outside the vocabulary [0, {})", v, vocab));
    ids.push_back(int32_t(v));
  }
  return ids;
}

std::string message_content(const Json& msg, size_t i) {
  const std::string param = fmt::format("messages[{}].content", i);
  auto it = msg.find("content");
  if (it == msg.end() || it->is_null()) {
    if (msg.contains("tool_calls")) bad(param, "tool calls are not supported by this server");
    bad(param, fmt::format("'{}' is required (a string or an array of text parts)", param));
  }
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) bad(param, "'content' must be a string or an array of content parts");
  std::string out;
  for (const Json& part : *it) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad(param, "each content part must be an object with a 'type'");
    const std::string type = part["type"].get<std::string>();
    if (type != "text") bad(param, fmt::format("content parts of type '{}' are not supported; only 'text'", type));
    if (!part.contains("text") || !part["text"].is_string()) bad(param, "a 'text' part needs a string 'text'");
    if (!out.empty()) out += "\n";
    out += part["text"].get<std::string>();
  }
  return out;
}

}  // namespace

void check_model_name(const Json& b, const ModelInfo& m) {
  auto name = get_string(b, "model");
  if (name && *name != m.served_name && *name != m.root)
    throw ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'.", *name, m.served_name),
                   "model", "model_not_found");
}

ParsedRequest parse_completion_request(const Json& b, const ModelInfo& m) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  check_model_name(b, m);
  refuse_unsupported(b);
  ParsedRequest r;
  const Json* prompt = field(b, "prompt");
  if (!prompt) bad("prompt", "'prompt' is required");
  const int32_t vocab = m.tokenizer->vocab_size();
  auto add_text = [&](const std::string& text) {
    r.prompts.push_back(m.tokenizer->encode(text, true));
    r.prompt_texts.push_back(text);
    r.prompt_from_ids.push_back(false);
  };
  auto add_ids = [&](const Json& a) {
    r.prompts.push_back(token_array(a, "prompt", vocab));
    r.prompt_texts.push_back(m.tokenizer->decode(r.prompts.back(), false));
    r.prompt_from_ids.push_back(true);
  };
  if (prompt->is_string()) {
    add_text(prompt->get<std::string>());
  } else if (prompt->is_array()) {
    if (prompt->empty()) bad("prompt", "'prompt' is an empty array");
    if ((*prompt)[0].is_number()) {
      add_ids(*prompt);
    } else {
      for (const Json& p : *prompt) {
        if (p.is_string())
          add_text(p.get<std::string>());
        else if (p.is_array())
          add_ids(p);
        else
          bad("prompt", "'prompt' must be a string, an array of strings, or token ids");
      }
    }
  } else {
    bad("prompt", "'prompt' must be a string, an array of strings, or token ids");
  }
  if (r.prompts.size() > 1024) bad("prompt", "at most 1024 prompts per request");
  for (const auto& p : r.prompts)
    if (p.empty()) bad("prompt", "a prompt tokenizes to no tokens; give some text or token ids");
  parse_sampling(b, m, r);
  if (auto v = get_bool(b, "echo")) r.echo = *v;
  if (const Json* lp = field(b, "logprobs")) {
    if (lp->is_boolean()) bad("logprobs", "'logprobs' of /v1/completions is the number of top tokens (0 to 20)");
    r.logprobs = checked_i32(*get_int(b, "logprobs"), "logprobs", 0, m.max_logprobs);
    r.params.logprobs = r.logprobs;
    if (r.echo) r.params.prompt_logprobs = std::max(r.params.prompt_logprobs, r.logprobs);
  }
  resolve_max_tokens(b, m, r, "max_tokens", 16);
  return r;
}

std::string render_chat_prompt(const Json& b, const ModelInfo& m, std::string* last_assistant) {
  const Json* msgs = field(b, "messages");
  if (!msgs || !msgs->is_array() || msgs->empty()) bad("messages", "'messages' must be a non-empty array");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& msg = (*msgs)[i];
    if (!msg.is_object()) bad(fmt::format("messages[{}]", i), "each message must be an object");
    auto role_it = msg.find("role");
    if (role_it == msg.end() || !role_it->is_string())
      bad(fmt::format("messages[{}].role", i), "each message needs a string 'role'");
    std::string role = role_it->get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant")
      bad(fmt::format("messages[{}].role", i),
          fmt::format("role '{}' is not supported; use system, user or assistant", role));
    messages.push_back({role, message_content(msg, i)});
  }
  if (last_assistant) *last_assistant = messages.back().role == "assistant" ? messages.back().content : "";
  // The template: per request (vLLM's chat_template field) or the model's.
  std::optional<ChatTemplate> custom;
  const ChatTemplate* tmpl = m.chat_template;
  if (auto t = get_string(b, "chat_template")) {
    try {
      const ChatTemplate* base = m.chat_template;
      custom.emplace(*t, base ? base->bos_token() : "", base ? base->eos_token() : "", "request chat_template");
    } catch (const Error& e) {
      bad("chat_template", e.what());
    }
    tmpl = &*custom;
  }
  if (!tmpl)
    bad("messages",
        "this model has no chat template (tokenizer_config.json); start the server with --chat-template or use "
        "/v1/completions");
  bool add_generation_prompt = get_bool(b, "add_generation_prompt").value_or(true);
  const bool continue_final = get_bool(b, "continue_final_message").value_or(false);
  if (continue_final) {
    if (messages.back().role != "assistant")
      bad("continue_final_message", "'continue_final_message' needs the last message to be the assistant's");
    if (add_generation_prompt && field(b, "add_generation_prompt"))
      bad("continue_final_message", "'continue_final_message' and 'add_generation_prompt' cannot both be true");
    add_generation_prompt = false;
  }
  Json extra = Json::object();
  if (const Json* kw = field(b, "chat_template_kwargs")) {
    if (!kw->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    extra = *kw;
  }
  std::string text;
  try {
    text = tmpl->render(messages, add_generation_prompt, nlohmann::ordered_json(extra));
  } catch (const Error& e) {
    // The source is the template's file (a server path): it goes to the log,
    // not to the client.
    std::fprintf(stderr, "kite serve: the chat template failed: %s\n", e.what());
    std::string msg = e.what();
    if (!e.source().empty() && msg.rfind(e.source() + ": ", 0) == 0) msg = msg.substr(e.source().size() + 2);
    bad("messages", fmt::format("the chat template failed: {}", msg));
  }
  if (continue_final) {
    // Cut what the template appended after the final message's text, so the
    // reply continues it.
    const std::string& last = messages.back().content;
    size_t at = last.empty() ? std::string::npos : text.rfind(last);
    if (at != std::string::npos) text.resize(at + last.size());
  }
  return text;
}

ParsedRequest parse_chat_request(const Json& b, const ModelInfo& m) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  check_model_name(b, m);
  refuse_unsupported(b);
  ParsedRequest r;
  r.chat = true;
  std::string last_assistant;
  std::string text = render_chat_prompt(b, m, &last_assistant);
  // The rendered text carries its own BOS, as HF's apply_chat_template.
  r.prompts.push_back(m.tokenizer->encode(text, false));
  r.prompt_texts.push_back(text);
  if (r.prompts[0].empty()) bad("messages", "the rendered conversation has no tokens");
  parse_sampling(b, m, r);
  if (auto v = get_bool(b, "echo")) r.echo = *v;
  if (r.echo) r.chat_echo = last_assistant;
  const bool logprobs = get_bool(b, "logprobs").value_or(false);
  auto top = get_int(b, "top_logprobs");
  if (top && !logprobs) bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
  if (logprobs) {
    r.logprobs = top ? checked_i32(*top, "top_logprobs", 0, m.max_logprobs) : 0;
    r.params.logprobs = r.logprobs;
  }
  resolve_max_tokens(b, m, r, "max_completion_tokens", 0);
  return r;
}

// ---- responses ------------------------------------------------------------------

ResponseBuilder::ResponseBuilder(const ModelInfo& model, const ParsedRequest& request, std::string id, int64_t created)
    : model_(model),
      req_(request),
      id_(std::move(id)),
      created_(created),
      choices_(request.prompts.size() * size_t(request.params.n)),
      prompt_logprobs_(request.prompts.size()),
      prompt_tokens_(request.prompts.size(), 0),
      cached_tokens_(request.prompts.size(), 0) {
  for (size_t i = 0; i < request.prompts.size(); ++i) prompt_tokens_[i] = int64_t(request.prompts[i].size());
  if (request.logprobs >= 0) {
    std::vector<int32_t> a = model.tokenizer->encode("a", false);
    if (a.size() == 1) {
      anchor_ = a[0];
      anchor_text_ = model.tokenizer->decode(a, false);
    }
  }
}

ResponseBuilder::Choice& ResponseBuilder::choice(size_t prompt_index, int32_t sample_index) {
  return choices_.at(prompt_index * size_t(req_.params.n) + size_t(sample_index));
}

std::string ResponseBuilder::token_text(int32_t id) const {
  // The token's text as it reads inside a sequence: decoders drop the
  // leading space of a sequence's first word (SentencePiece), so decode it
  // after an anchor token and keep what it added.
  if (anchor_ < 0) {
    const int32_t one[1] = {id};
    return model_.tokenizer->decode(one, false);
  }
  const int32_t two[2] = {anchor_, id};
  std::string s = model_.tokenizer->decode(two, false);
  return s.size() >= anchor_text_.size() ? s.substr(anchor_text_.size()) : s;
}

void ResponseBuilder::note_output(size_t prompt_index, const RequestOutput& out) {
  if (!out.prompt_logprobs.empty())
    prompt_logprobs_[prompt_index].insert(prompt_logprobs_[prompt_index].end(), out.prompt_logprobs.begin(),
                                          out.prompt_logprobs.end());
  if (out.finished) cached_tokens_[prompt_index] = out.metrics.cached_tokens;
  for (const SampleOutput& s : out.samples) {
    Choice& c = choice(prompt_index, s.index);
    c.num_tokens = s.num_tokens;
    if (s.finish != FinishReason::None) {
      c.finish = s.finish;
      if (!s.stop_string.empty()) {
        c.stop_reason = s.stop_string;
      } else if (s.stop_token) {
        for (int32_t t : req_.params.stop_token_ids)
          if (t == *s.stop_token) c.stop_reason = t;
      }
    }
  }
}

Json ResponseBuilder::finish_json(const Choice& c) const {
  if (c.finish == FinishReason::None) return nullptr;
  return finish_reason_name(c.finish);
}

Json ResponseBuilder::completion_logprobs(Choice& c, size_t prompt_index, const std::vector<TokenLogprobs>& lps,
                                          bool with_prompt) const {
  Json tokens = Json::array(), token_lps = Json::array(), tops = Json::array(), offsets = Json::array();
  auto push = [&](int32_t id, std::string piece, const TokenLogprobs* lp) {
    offsets.push_back(c.text_offset);
    c.text_offset += utf8_length(piece);
    if (!lp) {
      tokens.push_back(std::move(piece));
      token_lps.push_back(nullptr);
      tops.push_back(nullptr);
      return;
    }
    Json top = Json::object();
    for (const auto& [tid, v] : lp->top) {
      std::string ts = token_text(tid);
      if (!top.contains(ts)) top[ts] = finite_logprob(v);
    }
    if (std::string ts = token_text(id); !top.contains(ts)) top[ts] = finite_logprob(lp->logprob);
    tokens.push_back(std::move(piece));
    token_lps.push_back(finite_logprob(lp->logprob));
    tops.push_back(std::move(top));
  };
  const std::vector<int32_t>& ids = req_.prompts[prompt_index];
  if (with_prompt) {
    // The echoed text is the client's string (no special tokens) or, for
    // token ids, their decoding with special tokens: split it the same way.
    const std::vector<TokenLogprobs>& scored = prompt_logprobs_[prompt_index];
    IncrementalDetokenizer d(*model_.tokenizer, !req_.prompt_from_ids[prompt_index]);
    std::vector<std::string> pieces;
    pieces.reserve(ids.size());
    for (int32_t id : ids) pieces.push_back(d.push(id));
    if (!pieces.empty()) pieces.back() += d.flush();
    for (size_t i = 0; i < ids.size(); ++i)
      push(ids[i], std::move(pieces[i]), i >= 1 && i - 1 < scored.size() ? &scored[i - 1] : nullptr);
  }
  if (!c.detok) {
    c.detok.emplace(*model_.tokenizer, req_.params.skip_special_tokens);
    for (int32_t id : ids) c.detok->push(id);
  }
  for (size_t i = 0; i < lps.size(); ++i) {
    std::string piece = c.detok->push(lps[i].token);
    if (i + 1 == lps.size() && c.finish != FinishReason::None) piece += c.detok->flush();
    push(lps[i].token, std::move(piece), &lps[i]);
  }
  return Json{{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

Json ResponseBuilder::chat_logprobs(const std::vector<TokenLogprobs>& lps) const {
  auto entry = [&](int32_t id, float lp) {
    std::string s = token_text(id);
    Json bytes = Json::array();
    for (unsigned char ch : s) bytes.push_back(int(ch));
    return Json{{"token", s}, {"logprob", finite_logprob(lp)}, {"bytes", bytes}};
  };
  Json content = Json::array();
  for (const TokenLogprobs& lp : lps) {
    Json e = entry(lp.token, lp.logprob);
    Json top = Json::array();
    for (size_t k = 0; k < lp.top.size() && int32_t(k) < req_.logprobs; ++k)
      top.push_back(entry(lp.top[k].first, lp.top[k].second));
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  return Json{{"content", content}, {"refusal", nullptr}};
}

std::vector<Json> ResponseBuilder::chat_role_chunks() const {
  std::vector<Json> out;
  for (size_t i = 0; i < choices_.size(); ++i) {
    Json ch = {{"index", i},
               {"delta", {{"role", "assistant"}, {"content", ""}}},
               {"logprobs", nullptr},
               {"finish_reason", nullptr}};
    Json chunk = {{"id", id_},
                  {"object", "chat.completion.chunk"},
                  {"created", created_},
                  {"model", model_.served_name},
                  {"choices", Json::array({ch})}};
    if (req_.include_usage) chunk["usage"] = nullptr;
    out.push_back(std::move(chunk));
  }
  return out;
}

std::vector<Json> ResponseBuilder::stream_chunks(size_t prompt_index, const RequestOutput& out) {
  note_output(prompt_index, out);
  std::vector<Json> chunks;
  for (const SampleOutput& s : out.samples) {
    Choice& c = choice(prompt_index, s.index);
    const bool first = !c.started;
    std::string text = s.text;
    if (first && req_.echo) text = (req_.chat ? req_.chat_echo : req_.prompt_texts[prompt_index]) + text;
    const bool has_lp = req_.logprobs >= 0 && (!s.logprobs.empty() || (first && req_.echo && !req_.chat));
    if (text.empty() && !has_lp && s.finish == FinishReason::None) continue;
    c.started = true;
    c.text += text;
    const size_t index = prompt_index * size_t(req_.params.n) + size_t(s.index);
    Json ch;
    if (req_.chat) {
      Json delta = Json::object();
      if (!text.empty() || s.finish == FinishReason::None) delta["content"] = text;
      ch = {{"index", index}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish_json(c)}};
      if (req_.logprobs >= 0) ch["logprobs"] = chat_logprobs(s.logprobs);
    } else {
      ch = {{"index", index}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_json(c)}};
      if (req_.logprobs >= 0) {
        const bool with_prompt = first && req_.echo;
        ch["logprobs"] = completion_logprobs(c, prompt_index, s.logprobs, with_prompt);
      }
    }
    if (s.finish != FinishReason::None) ch["stop_reason"] = c.stop_reason;
    Json chunk = {{"id", id_},
                  {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", model_.served_name},
                  {"choices", Json::array({std::move(ch)})}};
    if (req_.include_usage) chunk["usage"] = nullptr;
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

void ResponseBuilder::add(size_t prompt_index, const RequestOutput& out) {
  note_output(prompt_index, out);
  for (const SampleOutput& s : out.samples) {
    Choice& c = choice(prompt_index, s.index);
    c.text += s.text;
    c.logprobs.insert(c.logprobs.end(), s.logprobs.begin(), s.logprobs.end());
  }
}

Json ResponseBuilder::usage() const {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (size_t i = 0; i < prompt_tokens_.size(); ++i) {
    prompt += prompt_tokens_[i];
    cached += cached_tokens_[i];
  }
  for (const Choice& c : choices_) completion += c.num_tokens;
  return Json{{"prompt_tokens", prompt},
              {"completion_tokens", completion},
              {"total_tokens", prompt + completion},
              {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

Json ResponseBuilder::usage_chunk() const {
  return Json{{"id", id_},
              {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created_},
              {"model", model_.served_name},
              {"choices", Json::array()},
              {"usage", usage()}};
}

Json ResponseBuilder::response() const {
  Json choices = Json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    Choice c = choices_[i];  // a copy: logprob offsets are computed afresh
    const size_t prompt_index = i / size_t(req_.params.n);
    Json ch;
    if (req_.chat) {
      std::string text = req_.echo ? req_.chat_echo + c.text : c.text;
      ch = {{"index", i},
            {"message", {{"role", "assistant"}, {"content", text}}},
            {"logprobs", nullptr},
            {"finish_reason", finish_json(c)},
            {"stop_reason", c.stop_reason}};
      if (req_.logprobs >= 0) ch["logprobs"] = chat_logprobs(c.logprobs);
    } else {
      std::string text = req_.echo ? req_.prompt_texts[prompt_index] + c.text : c.text;
      ch = {{"index", i},
            {"text", text},
            {"logprobs", nullptr},
            {"finish_reason", finish_json(c)},
            {"stop_reason", c.stop_reason}};
      if (req_.logprobs >= 0) ch["logprobs"] = completion_logprobs(c, prompt_index, c.logprobs, req_.echo);
    }
    choices.push_back(std::move(ch));
  }
  return Json{{"id", id_},           {"object", req_.chat ? "chat.completion" : "text_completion"},
              {"created", created_}, {"model", model_.served_name},
              {"choices", choices},  {"usage", usage()}};
}

}  // namespace kite::server
