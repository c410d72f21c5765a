// Malformed tokenizer files raise kite::Error naming the file and the field.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_test_util.h"

namespace kite {
namespace {

// Expects from_json_text(json) to throw an Error whose field starts with
// `field` and whose message contains `needle`.
void expect_json_error(const std::string& json, const std::string& field, const std::string& needle) {
  try {
    Tokenizer::from_json_text(json, "bad/tokenizer.json");
    ADD_FAILURE() << "no error for " << json;
  } catch (const Error& e) {
    EXPECT_EQ(e.source(), "bad/tokenizer.json");
    EXPECT_TRUE(e.field().starts_with(field)) << "field '" << e.field() << "', expected '" << field << "'";
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json"), std::string::npos) << e.what();
  }
}

const std::string kMini =
    R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": ["a b"]}})";

TEST(MalformedJson, Errors) {
  expect_json_error("{not json", "", "not valid JSON");
  expect_json_error("[1, 2]", "", "JSON object");
  expect_json_error("{}", "model", "missing");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": [1, 2]}})", "model.vocab", "not an object");
  expect_json_error(R"({"model": {"type": "WordPiece", "vocab": {}}})", "model.type", "WordPiece");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})", "model.merges[0]",
                    "\"c\"");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})", "model.merges[0]",
                    "\"ab\"");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["ab"]}})", "model.merges[0]",
                    "one space");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a"]]}})", "model.merges[0]",
                    "expected");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 99999999}}})", "model.vocab.a", "out of range");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", "model.vocab.a", "out of range");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})", "model.vocab.a", "integer");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "<unk>"}})", "model.unk_token",
                    "not in the vocabulary");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})",
                    "pre_tokenizer.pattern.Regex", "invalid regex");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "a"},
                        "behavior": "Sideways"}]}})",
                    "pre_tokenizer.pretokenizers[0].behavior", "Sideways");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "normalizer": {"type": "BertNormalizer"}})",
                    "normalizer.type", "BertNormalizer");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "CTC"}})", "decoder.type",
                    "CTC");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 1}]})",
                    "added_tokens[0].content", "missing");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}})",
                    "post_processor.special_tokens", "<s>");
  expect_json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {"<s>": {"ids": [7]}}}})",
                    "post_processor.special_tokens.<s>", "outside the vocabulary");
}

TEST(MinimalJson, MergesInBothFormats) {
  for (const std::string merges : {R"(["a b"])", R"([["a", "b"]])"}) {
    const std::string json =
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": )" + merges + "}}";
    auto tok = Tokenizer::from_json_text(json, "mini.json");
    EXPECT_EQ(tok->encode("abcab"), (std::vector<int32_t>{2, 3, 2}));
    EXPECT_EQ(tok->encode("ba"), (std::vector<int32_t>{1, 0}));
    EXPECT_EQ(tok->encode("xa"), (std::vector<int32_t>{0}));  // no unk token: unknown chars are dropped, as HF does
    EXPECT_FALSE(tok->bos_id().has_value());
  }
  auto tok = Tokenizer::from_json_text(kMini, "mini.json");
  EXPECT_EQ(tok->vocab_size(), 4);
  EXPECT_EQ(tok->id_to_piece(2), "ab");
  EXPECT_EQ(tok->id_to_piece(4), "");
}

TEST(MalformedModel, TruncatedAndGarbageSentencePiece) {
  const std::string good = test::slurp(test::shared_dir() + "/tokenizers/llama2/tokenizer.model");
  ASSERT_GT(good.size(), 100000u);
  EXPECT_EQ(Tokenizer::from_sentencepiece_bytes(good, "ok.model")->vocab_size(), 32000);
  for (const size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{100}, size_t{1000}, good.size() / 3, good.size() / 2,
                         good.size() - 200}) {
    try {
      Tokenizer::from_sentencepiece_bytes(std::string_view(good).substr(0, n), "cut.model");
      ADD_FAILURE() << "no error for a model cut to " << n << " bytes";
    } catch (const Error& e) {
      EXPECT_EQ(e.source(), "cut.model");
      EXPECT_FALSE(e.field().empty()) << e.what();
    }
  }
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    std::string junk(200 + rng() % 2000, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    EXPECT_THROW(Tokenizer::from_sentencepiece_bytes(junk, "junk.model"), Error);
  }
  // Flipped bytes in a good model: either loads or throws Error, never crashes.
  for (int round = 0; round < 200; ++round) {
    std::string mutated = good.substr(0, 20000 + rng() % 5000);
    for (int k = 0; k < 4; ++k) mutated[rng() % mutated.size()] = static_cast<char>(rng());
    try {
      Tokenizer::from_sentencepiece_bytes(mutated, "mutated.model");
    } catch (const Error&) {
    }
  }
}

TEST(MalformedModel, LoadPaths) {
  EXPECT_THROW(Tokenizer::load(test::shared_dir() + "/no/such/tokenizer.json"), Error);
  EXPECT_THROW(Tokenizer::load(test::shared_dir() + "/text"), Error);  // a directory without tokenizer files
  try {
    Tokenizer::load(test::shared_dir() + "/text/persuasion.txt");  // neither JSON nor protobuf
    ADD_FAILURE() << "loaded a text file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("persuasion.txt"), std::string::npos);
  }
}

}  // namespace
}  // namespace kite

namespace kite {
namespace {

TEST(PipelineFeatures, MetaspaceFirstAndRegexNormalizer) {
  const std::string json =
      R"({"model": {"vocab": {"\u2581": 0, "x": 1, "\u2581x": 2, "<s>": 3}, "merges": ["\u2581 x"]},
    "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true},
    "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"},
    "normalizer": {"type": "Replace", "pattern": {"Regex": "\\d+"}, "content": "x"}})";
  auto tok = Tokenizer::from_json_text(json, "meta.json");
  EXPECT_EQ(tok->encode("x x"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok->encode("x 42"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok->encode("xx"), (std::vector<int32_t>{2, 1}));
  // "first": no prefix after an added token.
  EXPECT_EQ(tok->encode("<s>x"), (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{2, 2}), "x x");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{3, 1}, false), "<s>x");
}

TEST(PipelineFeatures, ByteLevelSplitLowercaseIgnoreMerges) {
  const std::string json = R"({"added_tokens": [{"id": 5, "content": "<|im_start|>", "special": true}],
    "normalizer": {"type": "Lowercase"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true},
      {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "\u0120": 2, "\u0120a": 3, "ab": 4, "<|im_start|>": 5, "1": 6},
              "merges": [["a", "b"]], "ignore_merges": true}})";
  auto tok = Tokenizer::from_json_text(json, "bl.json");
  EXPECT_EQ(tok->encode("AB a"), (std::vector<int32_t>{4, 3}));
  EXPECT_EQ(tok->encode("11"), (std::vector<int32_t>{6, 6}));
  EXPECT_EQ(tok->encode("a<|im_start|>b"), (std::vector<int32_t>{0, 5, 1}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{4, 3}), "ab a");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{0, 5, 1}, true), "ab");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{0, 5, 1}, false), "a<|im_start|>b");
  EXPECT_TRUE(tok->is_special(5));
}

}  // namespace
}  // namespace kite
