// Chat templates: real model templates against Hugging Face renders, plus the
// Jinja2 language features one by one (expected outputs follow jinja2 3.x as
// configured by transformers: trim_blocks, lstrip_blocks, loopcontrols).
#include "chat/chat_template.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace kite {
namespace {

using json = nlohmann::ordered_json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Renders `tmpl` with no messages and `vars` as extra context.
std::string R(const std::string& tmpl, const json& vars = json::object()) {
  ChatTemplate t(tmpl, "<s>", "</s>", "test");
  return t.render_json(json::array(), false, vars);
}

// The kite::Error message of rendering (or parsing) `tmpl`; fails the test if none is thrown.
std::string E(const std::string& tmpl, const json& vars = json::object()) {
  try {
    R(tmpl, vars);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no kite::Error for template: " << tmpl;
  return "";
}

#define EXPECT_ERROR_HAS(tmpl, needle)                                      \
  do {                                                                      \
    std::string msg_ = E(tmpl);                                             \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_; \
  } while (0)

// ---- real templates ---------------------------------------------------------------

TEST(ChatTemplateReference, KiteRefMatchesReferenceJson) {
  const std::string dir = std::string(KITE_SHARED_DIR) + "/models/kite-ref";
  auto tmpl = load_chat_template(dir);
  ASSERT_TRUE(tmpl.has_value());
  EXPECT_EQ(tmpl->bos_token(), "<s>");
  EXPECT_EQ(tmpl->eos_token(), "</s>");
  json ref = json::parse(read_file(dir + "/reference.json"));
  ASSERT_TRUE(ref.contains("chat"));
  ASSERT_GE(ref["chat"].size(), 2u);
  for (const auto& c : ref["chat"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    EXPECT_EQ(tmpl->render(msgs, false), c["text"].get<std::string>());
    EXPECT_EQ(tmpl->render_json(c["messages"], false), c["text"].get<std::string>());
  }
}

TEST(ChatTemplateReference, KiteRefRaisesOnNonAlternatingRoles) {
  auto tmpl = load_chat_template(std::string(KITE_SHARED_DIR) + "/models/kite-ref");
  ASSERT_TRUE(tmpl.has_value());
  try {
    tmpl->render({{"user", "a"}, {"user", "b"}}, true);
    FAIL() << "expected raise_exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "raise_exception");
    EXPECT_EQ(e.source(), std::string(KITE_SHARED_DIR) + "/models/kite-ref/tokenizer_config.json");
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate user/assistant/user/assistant/..."),
              std::string::npos);
  }
}

// Every render recorded from Hugging Face transformers by scripts/fixtures/chat_fixtures.py.
TEST(ChatTemplateFixtures, MatchHuggingFaceRenders) {
  const std::string dir = std::string(KITE_FIXTURES_DIR) + "/chat";
  const std::string path = dir + "/renders.json";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " does not exist yet: run scripts/fixtures/chat_fixtures.py on a machine with transformers";
  }
  json entries = json::parse(read_file(path));
  ASSERT_GT(entries.size(), 100u);
  std::map<std::string, std::unique_ptr<ChatTemplate>> templates;
  size_t outputs = 0, errors = 0;
  for (const auto& e : entries) {
    const std::string name = e["template"].get<std::string>();
    if (!templates.count(name)) {
      templates[name] = std::make_unique<ChatTemplate>(read_file(dir + "/templates/" + name + ".jinja"),
                                                       e["bos"].get<std::string>(), e["eos"].get<std::string>(), name);
    }
    const ChatTemplate& t = *templates[name];
    const bool agp = e["add_generation_prompt"].get<bool>();
    SCOPED_TRACE(name + " " + e["messages"].dump() + " agp=" + (agp ? "true" : "false") +
                 " extra=" + e["extra_context"].dump());
    if (e.contains("output")) {
      ++outputs;
      EXPECT_EQ(t.render_json(e["messages"], agp, e["extra_context"]), e["output"].get<std::string>());
    } else {
      ++errors;
      const std::string want = e["error"].get<std::string>();
      try {
        t.render_json(e["messages"], agp, e["extra_context"]);
        ADD_FAILURE() << "expected error: " << want;
      } catch (const Error& err) {
        EXPECT_EQ(err.field(), "raise_exception");
        EXPECT_EQ(std::string(err.what()), name + ": raise_exception: " + want);
      }
    }
  }
  EXPECT_GT(outputs, 100u);
  EXPECT_GT(errors, 4u);
  EXPECT_EQ(templates.size(), 9u);
}

TEST(ChatTemplateReal, ChatMLWithGenerationPrompt) {
  ChatTemplate t(read_file(std::string(KITE_FIXTURES_DIR) + "/chat/templates/chatml_smollm2.jinja"), "<|im_start|>",
                 "<|im_end|>");
  EXPECT_EQ(t.render({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateReal, Llama3FilterBindsTighterThanPlus) {
  ChatTemplate t(read_file(std::string(KITE_FIXTURES_DIR) + "/chat/templates/llama3.jinja"), "<|begin_of_text|>",
                 "<|eot_id|>");
  EXPECT_EQ(t.render({{"user", "  Hello  "}}, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateReal, Qwen3EnableThinkingFromExtraContext) {
  ChatTemplate t(read_file(std::string(KITE_FIXTURES_DIR) + "/chat/templates/qwen3.jinja"), "", "<|im_end|>");
  EXPECT_EQ(t.render({{"user", "Hi"}}, true), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render({{"user", "Hi"}}, true, json{{"enable_thinking", false}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // The reasoning of the last assistant turn after the last user query is kept; earlier ones are dropped.
  json msgs = json::array({{{"role", "user"}, {"content", "q1"}},
                           {{"role", "assistant"}, {"content", "<think>\nr1\n</think>\n\na1"}},
                           {{"role", "user"}, {"content", "q2"}},
                           {{"role", "assistant"}, {"content", "<think>r2</think>a2"}}});
  EXPECT_EQ(t.render_json(msgs, false),
            "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n");
}

// ---- loading ---------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("kite_chat_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  std::filesystem::path path_;
  static inline int counter_ = 0;
};

TEST(LoadChatTemplate, NamedTemplateListAndAddedTokenObjects) {
  TempDir d;
  d.write("tokenizer_config.json", R"({
    "bos_token": {"content": "<B>", "lstrip": false},
    "eos_token": "<E>",
    "chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ bos_token }}x{{ eos_token }}"}]
  })");
  auto t = load_chat_template(d.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render({}, false), "<B>x<E>");
}

TEST(LoadChatTemplate, JinjaFileTakesPrecedenceAndSpecialTokensMapFillsTokens) {
  TempDir d;
  d.write("tokenizer_config.json", R"({"chat_template": "config"})");
  d.write("special_tokens_map.json", R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})");
  d.write("chat_template.jinja", "{{ bos_token }}file{{ eos_token }}\n");
  auto t = load_chat_template(d.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render({}, false), "<s>file</s>");
  EXPECT_EQ(t->source(), d.path() + "/chat_template.jinja");
}

TEST(LoadChatTemplate, NoTemplateGivesNullopt) {
  TempDir d;
  EXPECT_FALSE(load_chat_template(d.path()).has_value());
  d.write("tokenizer_config.json", R"({"bos_token": "<s>", "chat_template": null})");
  EXPECT_FALSE(load_chat_template(d.path()).has_value());
}

TEST(LoadChatTemplate, BadConfigNamesFileAndField) {
  TempDir d;
  d.write("tokenizer_config.json", R"({"chat_template": 42})");
  try {
    load_chat_template(d.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.source(), d.path() + "/tokenizer_config.json");
    EXPECT_EQ(e.field(), "chat_template");
  }
  d.write("tokenizer_config.json",
          R"({"chat_template": [{"name": "a", "template": "x"}, {"name": "b", "template": "y"}]})");
  EXPECT_THROW(load_chat_template(d.path()), Error);
  d.write("tokenizer_config.json", "{not json");
  EXPECT_THROW(load_chat_template(d.path()), Error);
}

TEST(ChatTemplateApi, RenderJsonRejectsNonArrayMessages) {
  ChatTemplate t("x", "", "");
  EXPECT_THROW(t.render_json(json::object(), false), Error);
  EXPECT_THROW(t.render_json(json::array(), false, json::array()), Error);
}

TEST(ChatTemplateApi, RejectsDeepJsonAndReservedContextKeys) {
  ChatTemplate t("{{ messages | length }}", "", "");
  json deep = json::array();
  for (int i = 0; i < 10000; ++i) deep = json::array({deep});
  try {
    t.render_json(json::array({deep}), false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "messages");
  }
  EXPECT_THROW(t.render_json(json::array(), false, json{{"x", deep}}), Error);
  EXPECT_THROW(t.render_json(json::array(), false, json{{"messages", json::array()}}), Error);
  EXPECT_THROW(t.render_json(json::array(), false, json{{"add_generation_prompt", true}}), Error);
  // Messages carry arbitrary JSON (tool calls, non-string content) in key order.
  ChatTemplate u("{% for m in messages %}{{ m.content }}|{{ m.tool_calls[0].function.arguments | tojson }}{% endfor %}",
                 "", "");
  json msgs = json::parse(R"([{"role": "assistant", "content": null,
    "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": [1.5, "x"]}}}]}])");
  EXPECT_EQ(u.render_json(msgs, false), "None|{\"b\": 1, \"a\": [1.5, \"x\"]}");
}

TEST(ChatTemplateApi, DefaultVariables) {
  ChatTemplate t(
      "{{ tools is none }}{{ tools is defined }}{{ add_generation_prompt }}{{ messages | length }}{{ bos_token }}",
      "<s>", "</s>");
  EXPECT_EQ(t.render({{"user", "a"}}, true), "TrueTrueTrue1<s>");
  EXPECT_EQ(t.render({}, false, json{{"tools", json::array({1})}}), "FalseTrueFalse0<s>");
}

// ---- language: output and literals ---------------------------------------------------

TEST(Jinja, TextCommentsAndLiterals) {
  EXPECT_EQ(R("a{# comment {{ x }} #}b"), "ab");
  EXPECT_EQ(R("{{ true }} {{ True }} {{ false }} {{ none }} {{ None }}"), "True True False None None");
  EXPECT_EQ(R("{{ [1, 'a', none, true, 2.5] }}"), "[1, 'a', None, True, 2.5]");
  EXPECT_EQ(R("{{ {'a': 1, 'b': [2], 'c': {'d': 'e'}} }}"), "{'a': 1, 'b': [2], 'c': {'d': 'e'}}");
  EXPECT_EQ(R("{{ \"it's\" }} {{ ['it\\'s', 'say \"hi\"'] }}"), "it's [\"it's\", 'say \"hi\"']");
  EXPECT_EQ(R("{{ 'a\\nb\\t\\\\\\x41\\u00e9\\U0001F600' }}"), "a\nb\t\\A\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(R("{{ 'ab' 'cd' }}"), "abcd");
  EXPECT_EQ(R("{{ 1_000 }}"), "1000");
}

TEST(Jinja, Arithmetic) {
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 10 }} {{ -2 ** 2 }}"), "7 9 1024 4");
  EXPECT_EQ(R("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 4 / 2 }}"), "3 -4 1 2 3.5 2.0");
  EXPECT_EQ(R("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-5 }} {{ 1e16 }} {{ 123456789012345.0 }} {{ 0.0001 }}"),
            "0.30000000000000004 1e+20 1.5e-05 1e+16 123456789012345.0 0.0001");
  EXPECT_EQ(R("{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 2 * 'x' }} {{ [1] + [2, 3] }} {{ [0] * 3 }}"),
            "abcd ababab xx [1, 2, 3] [0, 0, 0]");
  EXPECT_EQ(R("{{ 'a' ~ 1 ~ none ~ true ~ undefined_var }}"), "a1NoneTrue");
  EXPECT_EQ(R("{{ true + 1 }} {{ -(3) }} {{ +4 }}"), "2 -3 4");
  EXPECT_ERROR_HAS("{{ 1 / 0 }}", "division by zero");
  EXPECT_ERROR_HAS("{{ 1 // 0 }}", "by zero");
  EXPECT_ERROR_HAS("{{ 'a' + 1 }}", "unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_ERROR_HAS("{{ 9223372036854775807 + 1 }}", "integer overflow");
  EXPECT_ERROR_HAS("{{ x + 1 }}", "'x' is undefined");
}

TEST(Jinja, ComparisonsAndLogic) {
  EXPECT_EQ(R("{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' != 'b' }}{{ [1, 2] == [1, 2] }}"),
            "TrueFalseTrueTrueTrueTrue");
  EXPECT_EQ(R("{{ 'a' in 'cat' }}{{ 'x' not in ['x'] }}{{ 2 in {2: 'b'} }}{{ 'k' in {'k': 1} }}{{ 3 in [1, 2] }}"),
            "TrueFalseTrueTrueFalse");
  EXPECT_EQ(R("{{ 'abc' < 'abd' }}{{ [1, 2] < [1, 3] }}{{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }}"), "TrueTrueTrue");
  EXPECT_EQ(R("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ none or [] }} {{ not 0 }} {{ not 'a' }}|{{ 'a' if false }}|"),
            "x y [] True False||");
  EXPECT_EQ(
      R("{{ 'yes' if 1 > 0 else 'no' }} {{ 'yes' if [] else 'no' }} {{ 'a' if false else 'b' if true else 'c' }}"),
      "yes no b");
  EXPECT_EQ(R("{{ undefined_var == undefined_var }}{{ undefined_var == none }}"), "TrueFalse");
  EXPECT_ERROR_HAS("{{ 1 < 'a' }}", "'<' not supported between instances of 'int' and 'str'");
  EXPECT_ERROR_HAS("{{ 1 in 2 }}", "argument of type 'int' is not iterable");
}

// ---- whitespace control -----------------------------------------------------------------

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(R("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(R("a \n {%- if true -%} \n b \n {%- endif -%} \n c"), "abc");
  // trim_blocks: the first newline after a block tag (not after {{ }}) is removed.
  EXPECT_EQ(R("{% if true %}\nx\n{% endif %}\ny"), "x\ny");
  EXPECT_EQ(R("{{ 'a' }}\nb"), "a\nb");
  EXPECT_EQ(R("{# c #}\nx"), "x");
  // lstrip_blocks: spaces/tabs before a block tag at the start of a line are removed.
  EXPECT_EQ(R("  {% if true %}x{% endif %}"), "x");
  EXPECT_EQ(R("a\n  \t{% if true %}x{% endif %}"), "a\nx");
  EXPECT_EQ(R("{% for i in [1, 2] %}\n  {% if i %}\n    v{{ i }}\n  {% endif %}\n{% endfor %}"), "    v1\n    v2\n");
  EXPECT_EQ(R("a {% if true %}b{% endif %}"), "a b");
  EXPECT_EQ(R("{{ 'x' }}  {% if true %}y{% endif %}"), "x  y");
  EXPECT_EQ(R("  {{ 'x' }}"), "  x");
  // '+' disables lstrip_blocks / trim_blocks for one tag.
  EXPECT_EQ(R("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(R("{% if true +%}\nx{% endif %}"), "\nx");
  // One trailing newline of the template is dropped; CRLF becomes LF.
  EXPECT_EQ(R("a\n"), "a");
  EXPECT_EQ(R("a\n\n"), "a\n");
  EXPECT_EQ(R("a\r\nb"), "a\nb");
  EXPECT_EQ(R("{% raw %}{{ x }}{% if %}{% endraw %}"), "{{ x }}{% if %}");
}

// ---- statements -----------------------------------------------------------------------------

TEST(Jinja, IfElifElse) {
  const std::string t = "{% if x == 1 %}one{% elif x == 2 %}two{% elif x is undefined %}undef{% else %}many{% endif %}";
  EXPECT_EQ(R(t, json{{"x", 1}}), "one");
  EXPECT_EQ(R(t, json{{"x", 2}}), "two");
  EXPECT_EQ(R(t, json{{"x", 7}}), "many");
  EXPECT_EQ(R(t), "undef");
}

TEST(Jinja, ForLoopVariables) {
  EXPECT_EQ(R("{% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
              "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}"),
            "10TrueFalse332|21FalseFalse321|32FalseTrue310|");
  EXPECT_EQ(R("{% for x in 'abc' %}{{ loop.previtem is defined }}{{ loop.nextitem | default('-') }}{% endfor %}"),
            "FalsebTruecTrue-");
  EXPECT_EQ(R("{% for x in range(4) %}{{ loop.cycle('a', 'b') }}{% endfor %}"), "abab");
}

TEST(Jinja, ForLoopFilterElseUnpackBreakContinue) {
  EXPECT_EQ(R("{% for x in range(10) if x is odd %}{{ x }}{% endfor %}"), "13579");
  EXPECT_EQ(R("{% for x in range(10) if x % 3 == 0 %}{{ loop.length }}{{ loop.index }}{% endfor %}"), "41424344");
  EXPECT_EQ(R("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in [1] if x > 5 %}a{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(R("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", json{{"d", {{"z", 1}, {"a", 2}}}}),
            "z=1;a=2;");
  EXPECT_EQ(R("{% for k in {'z': 1, 'a': 2} %}{{ k }}{% endfor %}"), "za");
  EXPECT_EQ(R("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }},{% endfor %}"), "3,7,");
  EXPECT_EQ(R("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}"
              "{{ x }}{% endfor %}"),
            "0134");
  EXPECT_EQ(R("{% for x in undefined_var %}a{% endfor %}|"), "|");
  EXPECT_EQ(R("{% for i in range(2) %}{% for j in range(2) %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}{% endfor %}"),
            "001 012 101 112 ");
  EXPECT_ERROR_HAS("{% for a, b in [[1, 2, 3]] %}{% endfor %}", "too many values to unpack");
  EXPECT_ERROR_HAS("{% for x in 5 %}{% endfor %}", "'int' object is not iterable");
  EXPECT_ERROR_HAS("{% break %}", "'break' outside of a for loop");
}

TEST(Jinja, ScopingAndNamespace) {
  // Assignments inside a loop body do not leak out, and each iteration starts from the outer value.
  EXPECT_EQ(R("{% set x = 1 %}{% for i in range(3) %}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}"), "11,11,11,1");
  // `if` has no scope.
  EXPECT_EQ(R("{% if true %}{% set y = 5 %}{% endif %}{{ y }}"), "5");
  EXPECT_EQ(R("{% set ns = namespace(c=0, s='') %}{% for i in range(4) %}{% set ns.c = ns.c + i %}"
              "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.c }} {{ ns.s }}"),
            "6 0123");
  EXPECT_EQ(R("{% set ns = namespace() %}{{ ns.missing is defined }}{% set ns.a = [1] %}{{ ns.a }}"), "False[1]");
  EXPECT_EQ(R("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
  EXPECT_EQ(R("{% set t = 1, 2 %}{{ t | length }}"), "2");
  EXPECT_ERROR_HAS("{% set x = 1 %}{% set x.a = 2 %}", "non-namespace");
  EXPECT_ERROR_HAS("{% set ns = namespace() %}{% set ns.self = ns %}", "reference cycle");
  EXPECT_ERROR_HAS("{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = [b] %}", "reference cycle");
}

TEST(Jinja, SetBlockFilterBlockMacroCall) {
  EXPECT_EQ(R("{% set x %}a{{ 1 }}b{% endset %}{{ x | upper }}"), "A1B");
  EXPECT_EQ(R("{% set x | trim | upper %}  ab  {% endset %}[{{ x }}]"), "[AB]");
  EXPECT_EQ(R("{% filter upper %}ab{{ 'c' }}{% endfilter %}"), "ABC");
  EXPECT_EQ(R("{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}"
              "{{ greet('Bob') }} {{ greet('Al', greeting='Hi') }} {{ greet(greeting='Yo', name='Cy') }}"),
            "Hello, Bob! Hi, Al! Yo, Cy!");
  EXPECT_EQ(R("{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}"
              "{% call wrap('b') %}inner{% endcall %}"),
            "<b>inner</b>");
  EXPECT_EQ(R("{% macro row(x) %}[{{ caller(x * 2) }}]{% endmacro %}{% call(v) row(4) %}v={{ v }}{% endcall %}"),
            "[v=8]");
  EXPECT_EQ(
      R("{% macro f(n) %}{% if n <= 1 %}1{% else %}{{ n * (f(n - 1) | int) }}{% endif %}{% endmacro %}{{ f(5) }}"),
      "120");
  EXPECT_EQ(R("{% macro m(a) %}{{ a }}:{{ varargs | join(',') }}:{{ kwargs.k }}{% endmacro %}{{ m(1, 2, 3, k='v') }}"),
            "1:2,3:v");
  EXPECT_EQ(R("{% macro m(a, b) %}{{ a }}{{ b is defined }}{% endmacro %}{{ m(1) }}"), "1False");
  EXPECT_ERROR_HAS("{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", "takes not more than 1 argument");
  EXPECT_ERROR_HAS("{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, z=2) }}", "no keyword argument 'z'");
  EXPECT_EQ(R("{% generation %}gen{% endgeneration %}"), "gen");
}

// ---- access, slices, undefined ---------------------------------------------------------------------

TEST(Jinja, AttributeItemAndSlices) {
  const json d = {{"d", {{"a", 1}, {"items", "key named items"}, {"list", {10, 20, 30}}}}};
  EXPECT_EQ(R("{{ d.a }}{{ d['a'] }}{{ d.list[1] }}{{ d.list[-1] }}{{ d['list'].1 }}", d), "11203020");
  // Attribute syntax finds dict methods first; subscripts find keys first.
  EXPECT_EQ(R("{{ d['items'] }}|{{ d.items() | length }}", d), "key named items|3");
  EXPECT_EQ(R("{{ d.missing }}|{{ d.missing is defined }}|{{ d.list[7] is defined }}|{{ none.foo is defined }}", d),
            "|False|False|False");
  EXPECT_EQ(R("{{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3, 4][::-1] }} {{ [1, 2, 3][:-1] }} {{ [1, 2, 3, 4, 5][::2] }}"),
            "[2, 3, 4] [4, 3, 2, 1] [1, 2] [1, 3, 5]");
  EXPECT_EQ(
      R("{{ 'hello'[1:3] }} {{ 'hello'[-1] }} {{ 'h\xc3\xa9llo'[::-1] }} {{ 'h\xc3\xa9llo'[1] }} {{ 'abc'[5:] }}|"),
      "el o oll\xc3\xa9h \xc3\xa9 |");
  EXPECT_EQ(R("{{ [1, 2, 3][-100:100] }} {{ [1, 2, 3][2:0:-1] }} {{ [1, 2, 3][10:] }}"), "[1, 2, 3] [3, 2] []");
  EXPECT_ERROR_HAS("{{ [1][::0] }}", "slice step cannot be zero");
}

TEST(Jinja, UndefinedSemantics) {
  EXPECT_EQ(
      R("{{ x }}|{{ x | length }}|{% for a in x %}a{% endfor %}|{{ x is none }}|{{ not x }}|{{ x | default('d') }}"),
      "|0||False|True|d");
  EXPECT_EQ(R("{{ x | trim }}|{{ x | string }}|{{ x | list }}|{{ x | join(',') }}|{{ 'a' in x }}"), "||[]||False");
  EXPECT_ERROR_HAS("{{ x.y }}", "'x' is undefined");
  EXPECT_ERROR_HAS("{{ x['y'] }}", "'x' is undefined");
  EXPECT_ERROR_HAS("{{ d.a.b }}", "'d' is undefined");
  EXPECT_ERROR_HAS("{{ {'a': 1}.b.c }}", "'dict object' has no attribute 'b'");
  EXPECT_ERROR_HAS("{{ x() }}", "'x' is undefined");
  EXPECT_ERROR_HAS("{{ x | tojson }}", "not JSON serializable");
}

// ---- tests --------------------------------------------------------------------------------------------

TEST(Jinja, Tests) {
  EXPECT_EQ(R("{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}"
              "{{ 1.5 is float }}{{ 1 is integer }}{{ true is boolean }}"),
            "FalseTrueTrueTrueTrueTrueTrueTrue");
  EXPECT_EQ(R("{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is iterable }}"
              "{{ [] is sequence }}"),
            "TrueFalseTrueTrueFalseTrue");
  EXPECT_EQ(
      R("{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 4 is even }}{{ 3 is odd }}{{ 6 is divisibleby 3 }}"
        "{{ 7 is divisibleby(3) }}"),
      "TrueFalseTrueTrueTrueTrueFalse");
  EXPECT_EQ(R("{{ 1 is eq 1 }}{{ 1 is equalto 2 }}{{ 1 is ne 2 }}{{ 2 is gt 1 }}{{ 2 is lt 1 }}{{ 2 is in [1, 2] }}"
              "{{ 'ab' is lower }}{{ 'AB' is upper }}{{ range is callable }}"),
            "TrueFalseTrueTrueFalseTrueTrueTrueTrue");
  EXPECT_EQ(R("{{ x is not defined }}{{ 1 is not string }}{{ none is not none }}"), "TrueTrueFalse");
  EXPECT_EQ(R("{{ 'x' if y is defined else 'z' }}"), "z");
}

// ---- filters -------------------------------------------------------------------------------------------

TEST(Jinja, StringFilters) {
  EXPECT_EQ(R("[{{ '  a b \n' | trim }}] [{{ 'xxaxx' | trim('x') }}] {{ 'aBc' | upper }} {{ 'aBc' | lower }}"),
            "[a b] [a] ABC abc");
  EXPECT_EQ(R("{{ 'hello world-foo(bar' | title }} {{ 'hELLO wORLD' | capitalize }}"),
            "Hello World-Foo(Bar Hello world");
  EXPECT_EQ(R("{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'ab' | replace('', '-') }}"),
            "bbb bba -a-b-");
  EXPECT_EQ(R("{{ '<a href=\"x\">&\\'' | e }} {{ '<b>' | escape }} {{ '<b>' | safe }}"),
            "&lt;a href=&#34;x&#34;&gt;&amp;&#39; &lt;b&gt; <b>");
  EXPECT_EQ(R("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent('> ', blank=true) }}"),
            "a\n  b\n\n  c|  a\n  b|a\n> \n> b");
  EXPECT_EQ(R("{{ 'h\xc3\xa9llo' | length }} {{ 'abc' | count }} {{ 'ab' | list }} {{ 'abc' | reverse }}"),
            "5 3 ['a', 'b'] cba");
  EXPECT_EQ(R("{{ '%s-%d-%.2f%%' | format('a', 3, 1.5) }} {{ 'one two  three' | wordcount }}"), "a-3-1.50% 3");
  EXPECT_EQ(R("{{ 'caf\xc3\xa9 \xc3\x89T\xc3\x89' | upper }} {{ '\xc3\x89T\xc3\x89' | lower }}"),
            "CAF\xc3\x89 \xc3\x89T\xc3\x89 \xc3\xa9t\xc3\xa9");
}

TEST(Jinja, ConversionFilters) {
  EXPECT_EQ(R("{{ '42' | int + 1 }} {{ '3.7' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ 'ff' | int(0, 16) }}"),
            "43 3 5 3 255");
  EXPECT_EQ(R("{{ '2.5' | float }} {{ 3 | float }} {{ 'x' | float }} {{ 1 | string }}{{ none | string }}"),
            "2.5 3.0 0.0 1None");
  EXPECT_EQ(R("{{ x | default('d') }}{{ '' | default('e', true) }}{{ 0 | d('z') }}{{ none | default('n') }}"),
            "de0None");
  EXPECT_EQ(R("{{ 2.5 | round }} {{ 3.5 | round }} {{ 3.14159 | round(2) }} {{ 2.1 | round(0, 'ceil') }} "
              "{{ 2.9 | round(1, 'floor') }} {{ 7 | round }} {{ -3 | abs }} {{ -2.5 | abs }}"),
            "2.0 4.0 3.14 3.0 2.9 7 3 2.5");
}

TEST(Jinja, SequenceFilters) {
  EXPECT_EQ(R("{{ [1, 2] | join }} {{ [1, 2] | join(', ') }} {{ [3, 1] | first }} {{ [3, 1] | last }} {{ [] | first is "
              "defined }}"),
            "12 1, 2 3 1 False");
  EXPECT_EQ(R("{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} "
              "{{ [1, 3, 2] | sort(reverse=true) }}"),
            "[1, 2, 3] ['A', 'b', 'c'] ['A', 'b', 'c'] [3, 2, 1]");
  EXPECT_EQ(R("{{ ['a', 'A', 'b', 'a'] | unique | list }} {{ [1, 2] | reverse | list }} {{ [1, 2, 3] | sum }} "
              "{{ [2, 5, 1] | max }} {{ [2, 5, 1] | min }}"),
            "['a', 'b'] [2, 1] 6 5 1");
  EXPECT_EQ(R("{% for row in [1, 2, 3, 4, 5] | batch(2, 0) %}{{ row | join(',') }};{% endfor %}"), "1,2;3,4;5,0;");
  EXPECT_EQ(R("{% for k, v in {'b': 1, 'a': 2, 'C': 0} | dictsort %}{{ k }}{{ v }}{% endfor %}"), "a2b1C0");
  EXPECT_EQ(R("{% for k, v in {'b': 1, 'a': 2} | dictsort(by='value', reverse=true) %}{{ k }}{% endfor %}"), "ab");
  const json people = {{"p", json::array({{{"name", "ann"}, {"age", 30}, {"role", "user"}},
                                          {{"name", "bob"}, {"age", 20}, {"role", "assistant"}},
                                          {{"name", "cy"}, {"age", 40}, {"role", "user"}, {"extra", true}}})}};
  EXPECT_EQ(R("{{ p | map(attribute='name') | join(',') }}", people), "ann,bob,cy");
  EXPECT_EQ(R("{{ p | map(attribute='extra', default='-') | list }}", people), "['-', '-', True]");
  EXPECT_EQ(R("{{ p | selectattr('role', 'equalto', 'user') | map(attribute='name') | list }}", people),
            "['ann', 'cy']");
  EXPECT_EQ(R("{{ p | rejectattr('role', '==', 'user') | map(attribute='name') | first }}", people), "bob");
  EXPECT_EQ(R("{{ p | selectattr('extra') | list | length }} {{ p | selectattr('extra', 'defined') | list | length }}",
              people),
            "1 1");
  EXPECT_EQ(R("{{ p | sort(attribute='age') | map(attribute='name') | join }}", people), "bobanncy");
  EXPECT_EQ(R("{{ ['a', 'b'] | map('upper') | join }} {{ [1, 2, 3, 4] | select('even') | list }} "
              "{{ [1, 0, 2] | reject | list }}"),
            "AB [2, 4] [0]");
  EXPECT_EQ(R("{{ {'a': 1} | items | list | length }} {{ [[1, 2]] | length }}"), "1 1");
}

TEST(Jinja, ToJson) {
  EXPECT_EQ(R("{{ {'a': '\xc3\xa9\"<', 'b': [1, 2.5, none, true], 'c': {}} | tojson }}"),
            "{\"a\": \"\xc3\xa9\\\"<\", \"b\": [1, 2.5, null, true], \"c\": {}}");
  EXPECT_EQ(R("{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ [1, 2] | tojson(separators=[',', ':']) }}"),
            "{\"a\": 2, \"b\": 1} [1,2]");
  EXPECT_EQ(R("{{ '\xc3\xa9\xf0\x9f\x98\x80' | tojson(true) }} {{ '\n\t\x01' | tojson }}"),
            "\"\\u00e9\\ud83d\\ude00\" \"\\n\\t\\u0001\"");
  // Key order of input JSON is kept.
  EXPECT_EQ(R("{{ d | tojson }}", json{{"d", {{"z", 1}, {"a", 1.0}}}}), "{\"z\": 1, \"a\": 1.0}");
}

// ---- methods and globals ---------------------------------------------------------------------------

TEST(Jinja, StringMethods) {
  EXPECT_EQ(R("{{ '  hi  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  hi'.lstrip() }}|{{ 'hi  '.rstrip() }}|"
              "{{ '\\n\\nhi\\n'.lstrip('\\n') }}|{{ '\\u00a0x\\u3000'.strip() }}"),
            "hi|hi|hi|hi|hi\n|x");
  EXPECT_EQ(
      R("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a.b.c'.rsplit('.', 1) }}"),
      "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a.b', 'c']");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'abc'.startswith('b') }}"),
            "TrueTrueFalse");
  EXPECT_EQ(
      R("{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'a-b'.replace('-', '+') }} {{ \"they're bill's\".title() }}"),
      "HELLO hello a+b They'Re Bill'S");
  EXPECT_EQ(R("{{ 'abcabc'.find('c') }} {{ 'abc'.find('z') }} {{ 'abcabc'.rfind('a') }} {{ 'abcabc'.count('bc') }} "
              "{{ '-'.join(['a', 'b']) }} {{ '12'.isdigit() }} {{ 'a1'.isalpha() }}"),
            "2 -1 3 2 a-b True False");
  EXPECT_EQ(R("{{ '{} and {}'.format(1, 'x') }} {{ '{0}{0}{name}'.format('a', name='b') }} {{ 'a\\nb'.splitlines() }}"),
            "1 and x aab ['a', 'b']");
  EXPECT_EQ(R("{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('z', 'no') }}{{ {'a': 1}.get('z') }}"
              "{{ {'a': 1}.keys() | list }}{{ {'a': 1}.values() | list }}"),
            "1noNone['a'][1]");
  EXPECT_EQ(R("{{ [1, 2, 1].count(1) }} {{ [1, 2].index(2) }}"), "2 1");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(R("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(3, 0, -1) | list }} {{ range(0) | list }}"),
            "[0, 1, 2] [1, 3, 5] [3, 2, 1] []");
  EXPECT_EQ(R("{{ dict(a=1, b='x') }} {{ namespace(a=1).a }}"), "{'a': 1, 'b': 'x'} 1");
  const std::string date = R("{{ strftime_now('%Y') }}");
  ASSERT_EQ(date.size(), 4u);
  EXPECT_GE(std::stoi(date), 2024);
  try {
    R("{{ raise_exception('bad ' ~ 42) }}");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "raise_exception");
    EXPECT_EQ(e.source(), "test");
    EXPECT_STREQ(e.what(), "test: raise_exception: bad 42");
  }
}

// ---- errors and limits -----------------------------------------------------------------------------------

TEST(JinjaErrors, SyntaxErrorsNameLineAndColumn) {
  try {
    ChatTemplate("{{ 1 + }}", "", "", "tokenizer_config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.source(), "tokenizer_config.json");
    EXPECT_EQ(e.field(), "chat_template");
    EXPECT_STREQ(e.what(), "tokenizer_config.json: chat_template: line 1 col 8: expected an expression, got '}}'");
  }
  EXPECT_ERROR_HAS("a\nb {% for %}", "line 2 col 10: expected a loop variable name, got '%}'");
  EXPECT_ERROR_HAS("{% if x %}abc", "line 1 col 14: unexpected end of template; expected 'elif' or 'else' or 'endif'");
  EXPECT_ERROR_HAS("{% if x %}{% endfor %}", "line 1 col 14: unexpected 'endfor'");
  EXPECT_ERROR_HAS("{% foo %}", "line 1 col 4: unknown tag 'foo'");
  EXPECT_ERROR_HAS("\n\n{{ 1 | nosuch }}", "line 3 col 8: unknown filter 'nosuch'");
  EXPECT_ERROR_HAS("{{ 1 is nosuch }}", "unknown test 'nosuch'");
  EXPECT_ERROR_HAS("{{ 'abc }}", "line 1 col 4: unterminated string literal");
  EXPECT_ERROR_HAS("{# abc", "line 1 col 1: unclosed comment");
  EXPECT_ERROR_HAS("{{ x ", "line 1 col 1: unclosed tag: expected '}}'");
  EXPECT_ERROR_HAS("{{ x $ }}", "unexpected character '$'");
  EXPECT_ERROR_HAS("{{ [1, 2 }}", "expected ']'");
  EXPECT_ERROR_HAS("{{ 99999999999999999999 }}", "does not fit in 64 bits");
  EXPECT_ERROR_HAS("{% for x in y recursive %}{% endfor %}", "recursive for loops are not supported");
}

TEST(JinjaErrors, UnknownFilterFailsAtParseEvenIfNeverRun) {
  EXPECT_THROW(ChatTemplate("{% if false %}{{ x | bogus }}{% endif %}", "", ""), Error);
}

TEST(JinjaLimits, RunawayRecursionAndLoopsThrow) {
  EXPECT_ERROR_HAS("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nested too deeply");
  EXPECT_ERROR_HAS("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps");
  EXPECT_ERROR_HAS("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "exceeds the limit");
  EXPECT_ERROR_HAS("{{ 'x' * 10000000000 }}", "exceeds the limit");
  EXPECT_ERROR_HAS("{{ [1] * 10000000000 }}", "too long");
  EXPECT_ERROR_HAS("{{ range(1000000) | length }}", "range too big");
  EXPECT_ERROR_HAS("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                   "exceeds the limit");
  EXPECT_ERROR_HAS("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}",
                   "nested too deeply");
}

TEST(JinjaLimits, DeepNestingIsRejectedAtParse) {
  EXPECT_ERROR_HAS("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "nested too deeply");
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_ERROR_HAS(chain + " }}", "nested too deeply");
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_ERROR_HAS(ifs, "nested too deeply");
  EXPECT_ERROR_HAS("{{ " + std::string(5000, '-') + "1 }}", "nested too deeply");
  EXPECT_ERROR_HAS("{{ " + std::string(3000, '[') + " }}", "nested too deeply");
}

TEST(JinjaLimits, ReasonableDepthStillWorks) {
  EXPECT_EQ(R("{{ " + std::string(30, '(') + "1" + std::string(30, ')') + " }}"), "1");
  std::string chain = "{{ 0";
  for (int i = 0; i < 60; ++i) chain += " + 1";
  EXPECT_EQ(R(chain + " }}"), "60");
}

}  // namespace
}  // namespace kite
