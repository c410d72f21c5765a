// libFuzzer target: parses the input bytes as a chat template and renders it
// with a small fixed conversation. Only kite::Error may escape the library;
// anything else (a crash, a sanitizer report, a hang, an OOM) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "chat/chat_template.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  static const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hello, w\u00f6rld! <think>x</think> "},
    {"role": "assistant", "content": "Hi.", "tool_calls": [{"id": "abc123def", "type": "function",
      "function": {"name": "f", "arguments": {"a": 1, "b": [true, null, 2.5]}}}]},
    {"role": "tool", "tool_call_id": "abc123def", "content": "{\"ok\": 1}"},
    {"role": "user", "content": ""}
  ])");
  static const nlohmann::ordered_json extra = nlohmann::ordered_json::parse(R"({
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "enable_thinking": false
  })");
  try {
    kite::ChatTemplate tmpl(text, "<s>", "</s>", "fuzz");
    (void)tmpl.render_json(messages, true, extra);
    (void)tmpl.render({{"user", "a"}, {"assistant", "b"}}, false);
  } catch (const kite::Error&) {
  }
  return 0;
}
