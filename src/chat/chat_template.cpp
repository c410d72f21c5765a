#include "chat/chat_template.h"

#include <stdexcept>

#include "chat/jinja.h"
#include "core/error.h"
#include "core/mapped_file.h"

namespace kite {

namespace {

nlohmann::ordered_json read_json_file(const std::string& path) {
  std::string text = read_text_file(path);
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path, "", std::string("invalid JSON: ") + e.what());
  }
}

// A special token is a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> token_text(const nlohmann::ordered_json& cfg, const char* key, const std::string& path) {
  if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  const auto& t = cfg[key];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_object() && t.contains("content") && t["content"].is_string()) return t["content"].get<std::string>();
  fail(path, key, "expected a string or an object with a string \"content\", got {}", t.type_name());
}

std::string pick_template(const nlohmann::ordered_json& t, const std::string& path) {
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    std::vector<std::pair<std::string, std::string>> named;
    for (const auto& e : t) {
      if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() ||
          !e["template"].is_string()) {
        fail(path, "chat_template", "expected a list of {{\"name\": string, \"template\": string}} objects");
      }
      named.emplace_back(e["name"].get<std::string>(), e["template"].get<std::string>());
    }
    for (const auto& [name, text] : named) {
      if (name == "default") return text;
    }
    if (named.size() == 1) return named[0].second;
    std::string names;
    for (const auto& [name, text] : named) names += (names.empty() ? "" : ", ") + name;
    fail(path, "chat_template", "{} named templates ({}) and none is named \"default\"", named.size(), names);
  }
  fail(path, "chat_template", "expected a string or a list of {{name, template}} objects, got {}", t.type_name());
}

}  // namespace

ChatTemplate::ChatTemplate(std::string template_text, std::string bos_token, std::string eos_token, std::string source)
    : text_(std::move(template_text)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      source_(std::move(source)) {
  template_ = jinja::parse(text_, source_);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra_context) const {
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& m : messages) arr.push_back({{"role", m.role}, {"content", m.content}});
  return render_json(arr, add_generation_prompt, extra_context);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                      const nlohmann::ordered_json& extra_context) const {
  if (!messages.is_array())
    fail(source_, "messages", "expected a JSON array of messages, got {}", messages.type_name());
  if (!extra_context.is_null() && !extra_context.is_object()) {
    fail(source_, "extra_context", "expected a JSON object, got {}", extra_context.type_name());
  }
  const jinja::Limits limits;
  auto convert = [&](const nlohmann::ordered_json& j, const std::string& field) {
    try {
      return jinja::Value::from_json(j, limits.max_value_depth);
    } catch (const std::length_error&) {
      fail(source_, field, "JSON nested deeper than {} levels", limits.max_value_depth);
    }
  };
  jinja::Value msgs = convert(messages, "messages");
  std::vector<std::pair<std::string, jinja::Value>> vars;
  vars.emplace_back("messages", msgs);
  vars.emplace_back("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  vars.emplace_back("bos_token", jinja::Value::string(bos_token_));
  vars.emplace_back("eos_token", jinja::Value::string(eos_token_));
  vars.emplace_back("tools", jinja::Value::none());
  vars.emplace_back("documents", jinja::Value::none());
  if (extra_context.is_object()) {
    for (auto it = extra_context.begin(); it != extra_context.end(); ++it) {
      if (it.key() == "messages" || it.key() == "add_generation_prompt") {
        fail(source_, "extra_context." + it.key(), "is reserved: pass it as the {} argument", it.key());
      }
      jinja::Value v = convert(it.value(), "extra_context." + it.key());
      bool replaced = false;
      for (auto& [k, old] : vars) {
        if (k == it.key()) {
          old = v;
          replaced = true;
        }
      }
      if (!replaced) vars.emplace_back(it.key(), std::move(v));
    }
  }
  return jinja::render(*template_, vars, limits);
}

std::optional<ChatTemplate> load_chat_template(const std::string& model_dir) {
  const std::string cfg_path = model_dir + "/tokenizer_config.json";
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  const std::string json_path = model_dir + "/chat_template.json";
  nlohmann::ordered_json cfg;
  if (file_exists(cfg_path)) cfg = read_json_file(cfg_path);
  if (!cfg.is_null() && !cfg.is_object()) fail(cfg_path, "", "expected a JSON object, got {}", cfg.type_name());

  std::optional<std::string> text;
  std::string source;
  if (file_exists(jinja_path)) {
    text = read_text_file(jinja_path);
    source = jinja_path;
  } else if (file_exists(json_path)) {
    nlohmann::ordered_json j = read_json_file(json_path);
    if (!j.is_object() || !j.contains("chat_template")) fail(json_path, "chat_template", "missing");
    text = pick_template(j["chat_template"], json_path);
    source = json_path;
  } else if (cfg.is_object() && cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
    text = pick_template(cfg["chat_template"], cfg_path);
    source = cfg_path;
  }
  if (!text) return std::nullopt;

  std::optional<std::string> bos = token_text(cfg, "bos_token", cfg_path);
  std::optional<std::string> eos = token_text(cfg, "eos_token", cfg_path);
  const std::string map_path = model_dir + "/special_tokens_map.json";
  if ((!bos || !eos) && file_exists(map_path)) {
    nlohmann::ordered_json map = read_json_file(map_path);
    if (!bos) bos = token_text(map, "bos_token", map_path);
    if (!eos) eos = token_text(map, "eos_token", map_path);
  }
  return ChatTemplate(std::move(*text), bos.value_or(""), eos.value_or(""), source);
}

}  // namespace kite
