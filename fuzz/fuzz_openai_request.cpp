// Fuzzes the OpenAI request parser: arbitrary bytes as a /v1/completions or
// /v1/chat/completions body (the first byte picks which). Anything but
// ApiError (or a JSON parse error) escaping is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/openai_protocol.h"

namespace {

const char* kTokenizer = R"({
  "version": "1.0",
  "model": {"type": "BPE", "vocab": {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, " ": 5, "ab": 6, "{": 7, "}": 8},
            "merges": ["a b"], "byte_fallback": false, "unk_token": null},
  "added_tokens": [{"id": 0, "content": "<s>", "special": true}, {"id": 1, "content": "</s>", "special": true}],
  "pre_tokenizer": null, "normalizer": null, "decoder": null, "post_processor": null
})";

struct Fixture {
  std::unique_ptr<kite::Tokenizer> tok = kite::Tokenizer::from_json_text(kTokenizer, "fuzz tokenizer");
  kite::ChatTemplate tmpl{
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}",
      "<s>", "</s>"};
  kite::server::ModelInfo info;
  Fixture() {
    info.served_name = "m";
    info.max_model_len = 64;
    info.tokenizer = tok.get();
    info.chat_template = &tmpl;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture f;
  if (size < 1) return 0;
  const bool chat = data[0] & 1;
  std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  kite::server::Json body = kite::server::Json::parse(text, nullptr, false);
  if (body.is_discarded()) return 0;
  try {
    kite::server::ParsedRequest r =
        chat ? kite::server::parse_chat_request(body, f.info) : kite::server::parse_completion_request(body, f.info);
    // What the parser accepts, the engine must accept.
    r.params.validate("fuzz");
    for (const auto& p : r.prompts) {
      if (p.empty() || int64_t(p.size()) + r.params.max_tokens > f.info.max_model_len) __builtin_trap();
      for (int32_t id : p)
        if (id < 0 || id >= f.tok->vocab_size()) __builtin_trap();
    }
    kite::server::ResponseBuilder rb(f.info, r, "id", 0);
    (void)rb.response().dump(-1, ' ', false, kite::server::Json::error_handler_t::replace);
  } catch (const kite::server::ApiError&) {
  }
  return 0;
}
