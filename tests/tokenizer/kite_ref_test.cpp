// models/kite-ref: tokenizer.json (HF BPE) and tokenizer.model (SentencePiece)
// against the ids HF transformers produced, and against each other.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_test_util.h"

namespace kite {
namespace {

std::string ref_dir() { return test::shared_dir() + "/models/kite-ref"; }

struct RefCase {
  std::string text;
  std::vector<int32_t> ids;
  bool add_special;
};

std::vector<RefCase> reference_cases() {
  const auto j = nlohmann::json::parse(test::slurp(ref_dir() + "/reference.json"));
  std::vector<RefCase> out;
  for (const auto& g : j.at("greedy")) out.push_back({g.at("prompt"), g.at("prompt_ids"), true});
  // Chat texts already hold "<s>"; HF encodes them without adding another.
  for (const auto& c : j.at("chat")) out.push_back({c.at("text"), c.at("ids"), false});
  return out;
}

class KiteRef : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Tokenizer> load() const {
    const std::string p = GetParam() == "dir" ? ref_dir() : ref_dir() + "/" + GetParam();
    return Tokenizer::load(p);
  }
};

TEST_P(KiteRef, ReproducesReferenceIds) {
  auto tok = load();
  const auto cases = reference_cases();
  ASSERT_GE(cases.size(), 5u);
  for (const RefCase& c : cases) EXPECT_EQ(tok->encode(c.text, c.add_special), c.ids) << c.text;
}

TEST_P(KiteRef, SpecialIds) {
  auto tok = load();
  EXPECT_EQ(tok->vocab_size(), 8192);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_TRUE(tok->is_special(2));
  EXPECT_FALSE(tok->is_special(300));
  EXPECT_EQ(tok->id_to_piece(1), "<s>");
  EXPECT_EQ(tok->piece_to_id("</s>"), 2);
  EXPECT_EQ(tok->piece_to_id("<0x41>"), tok->piece_to_id("<0x41>"));
  EXPECT_FALSE(tok->piece_to_id("no such piece at all").has_value());
}

TEST_P(KiteRef, DecodesChatText) {
  auto tok = load();
  for (const RefCase& c : reference_cases()) {
    if (c.add_special) continue;
    // Round trip with specials kept; HF's decode of these ids with
    // skip_special_tokens drops "<s>" and "</s>".
    EXPECT_EQ(tok->decode(c.ids, false), c.text);
  }
  const std::vector<int32_t> hello = {1, 381, 749, 950, 7234, 526, 5994, 7293, 381, 7252, 749, 950, 7234};
  EXPECT_EQ(tok->decode(hello, true), "[INST] Hello! [/INST]");
}

INSTANTIATE_TEST_SUITE_P(Files, KiteRef, ::testing::Values("tokenizer.json", "tokenizer.model", "dir"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '.') c = '_';
                           return n;
                         });

// The two files describe the same tokenizer: identical ids on long texts.
TEST(KiteRefAgreement, JsonAndModelAgreeOnEvaluationTexts) {
  auto json = Tokenizer::load(ref_dir() + "/tokenizer.json");
  auto model = Tokenizer::load(ref_dir() + "/tokenizer.model");
  for (const char* name : {"/text/persuasion.txt", "/text/wiki.test.raw"}) {
    std::string text = test::slurp(test::shared_dir() + name);
    text.resize(std::min<size_t>(text.size(), 200 * 1024));
    // Cut at a line end so the slice is valid UTF-8.
    text.resize(text.rfind('\n') + 1);
    const auto a = json->encode(text);
    const auto b = model->encode(text);
    ASSERT_GT(a.size(), 20000u) << name;
    ASSERT_EQ(a.size(), b.size()) << name;
    size_t first_diff = a.size();
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) {
        first_diff = i;
        break;
      }
    EXPECT_EQ(first_diff, a.size()) << name << ": first difference at token " << first_diff;
    EXPECT_EQ(json->decode(a), text) << name;
    // Line by line as well (many short texts, each with its own dummy prefix).
    size_t pos = 0, lines = 0;
    while (pos < text.size() && lines < 2000) {
      const size_t end = text.find('\n', pos);
      const std::string line = text.substr(pos, end - pos);
      ASSERT_EQ(json->encode(line), model->encode(line)) << line;
      pos = end + 1;
      ++lines;
    }
  }
}

}  // namespace
}  // namespace kite
