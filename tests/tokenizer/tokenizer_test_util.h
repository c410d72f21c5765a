#pragma once
// Shared helpers for the tokenizer tests.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace kite::test {

inline std::string shared_dir() { return KITE_SHARED_DIR; }
inline std::string vocab_dir() { return shared_dir() + "/tokenizers/llama.cpp-vocab"; }

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// llama.cpp test strings: separated by "\n__ggml_vocab_test__\n".
inline std::vector<std::string> read_inp(const std::string& path) {
  const std::string text = slurp(path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t hit = text.find(sep, pos);
    if (hit == std::string::npos) {
      out.push_back(text.substr(pos));
      break;
    }
    out.push_back(text.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  return out;
}

// One line of ids per string.
inline std::vector<std::vector<int32_t>> read_out(const std::string& path) {
  std::istringstream in(slurp(path));
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<int32_t> ids;
    int64_t id;
    while (ls >> id) ids.push_back(static_cast<int32_t>(id));
    out.push_back(std::move(ids));
  }
  return out;
}

// Varied strings for round-trip and streaming tests.
inline std::vector<std::string> varied_strings() {
  return {
      "",
      " ",
      "Hello world",
      " Hello world",
      "Hello  world\n\n  indented\tand\ttabs\r\nCRLF",
      "   leading and trailing   ",
      "\n\n\n",
      "1234567890 3.14159 1,000,000 2024-01-31",
      "def f(x):\n    return x ** 2  # square\n",
      "for (int i = 0; i < n; ++i) { sum += a[i]; }",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9 \xC3\x85ngstr\xC3\xB6m",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xEF\xBC\x81",
      "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF",
      "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
      "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\xA6\x99 emoji",
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
      "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD0\xBC\xD0\xB8\xD1\x80",
      "\xCE\x93\xCE\xB5\xCE\xB9\xCE\xAC \xCF\x83\xCE\xBF\xCF\x85",
      "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7",
      "She said, \"It's fine,\" but I'd say we'll see. You're right; they've left.",
      "URL: https://example.com/path?q=1&r=2#frag",
      "email@example.org <tag attr=\"v\">text</tag>",
      "\xE2\x80\x94 em dash \xE2\x80\x93 en dash \xE2\x80\xA6 ellipsis \xC2\xA0nbsp",
      "MiXeD CaSe WORDS and UPPERCASE",
      "a",
      "\xE2\x96\x81"
      "already has a meta space",
      "tab\tseparated\tvalues\n1\t2\t3",
      "x = [1, 2, 3]\nprint(x)",
  };
}

}  // namespace kite::test
