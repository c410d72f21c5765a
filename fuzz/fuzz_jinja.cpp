// libFuzzer target: parses the input bytes as a chat template and renders it
// with a small fixed conversation. Only kite::Error may escape the library;
// anything else (a crash, a sanitizer report, a hang, an OOM) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "chat/chat_template.h"
#include "core/error.h"

// Templates may legitimately build strings of up to 16 MiB; let ASan hand freed pages back to the OS so that
// RSS reflects live memory rather than allocator caches under -rss_limit_mb=1024.
extern "C" const char* __asan_default_options() { return "allocator_release_to_os_interval_ms=200"; }

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
