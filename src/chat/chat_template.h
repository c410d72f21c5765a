#pragma once
// Chat templates: the Jinja2 `chat_template` of a Hugging Face model, rendered
// by Kite's own Jinja2-subset interpreter (src/chat/jinja.h) with the settings
// transformers uses (trim_blocks, lstrip_blocks, loop controls, HF's tojson,
// raise_exception, strftime_now). Rendering is bounded: recursion depth, loop
// work and output size are limited, and exceeding a limit throws kite::Error.
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kite {

namespace jinja {
struct Template;
}

struct ChatMessage {
  std::string role;
  std::string content;
};

class ChatTemplate {
 public:
  // Parses once; throws kite::Error(source, "chat_template", "line L col C: expected ...") on syntax errors.
  ChatTemplate(std::string template_text, std::string bos_token, std::string eos_token,
               std::string source = "chat_template");

  // Renders messages as [{"role": ..., "content": ...}, ...]. Variables: messages, add_generation_prompt,
  // bos_token, eos_token, tools (none), documents (none), plus every key of extra_context (a JSON object,
  // overriding the defaults, e.g. {"enable_thinking": false} or {"tools": [...]}).
  // Throws kite::Error(source, "raise_exception", msg) when the template calls raise_exception(msg), and
  // kite::Error(source, "chat_template", "line L: ...") on other runtime errors.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra_context = {}) const;
  // Render with arbitrary JSON messages (tool calls etc.): messages must be a JSON array.
  std::string render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                          const nlohmann::ordered_json& extra_context = {}) const;

  const std::string& text() const { return text_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  const std::string& source() const { return source_; }

 private:
  std::string text_;
  std::string bos_token_;
  std::string eos_token_;
  std::string source_;
  std::shared_ptr<const jinja::Template> template_;
};

// Reads chat_template (string, or list of {name, template} picking "default") and bos_token/eos_token (string or
// {"content": ...} object) from <model_dir>/tokenizer_config.json; a chat_template.jinja file in the dir takes
// precedence over the config's template. Returns nullopt when the model has no template.
std::optional<ChatTemplate> load_chat_template(const std::string& model_dir);

}  // namespace kite
