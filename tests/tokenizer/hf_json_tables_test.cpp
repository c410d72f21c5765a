// The fast reader of tokenizer.json's vocabulary and merges: it gives
// exactly what the whole-document parse gives, on real and on tricky files,
// and hands anything unusual to the whole-document parse.
#include "tokenizer/hf_json_tables.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_test_util.h"

namespace kite {
namespace {

using nlohmann::json;
using tok::BpeTables;

TEST(HfJsonTables, ReadsEscapesBothMergeFormsAndLeavesTheRest) {
  const std::string text = R"( {"version": "1.0", "model": {"type": "BPE",
    "merges": [["a", "b"], "ab c", ["\u00e9", "\ud83d\ude00"]],
    "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4, "\u00e9": 5, "\ud83d\ude00": 6, "\u00e9\ud83d\ude00": 7,
              "q\"\\/\n\t": 8}, "dropout": null},
    "added_tokens": [{"id": 9, "content": "<s>", "special": true}]} )";
  BpeTables t;
  std::string rest;
  ASSERT_TRUE(tok::split_bpe_tables(text, t, rest));
  ASSERT_EQ(t.vocab.size(), 9u);
  EXPECT_EQ(t.vocab[5].first, "\xc3\xa9");
  EXPECT_EQ(t.vocab[6].first, "\xf0\x9f\x98\x80");
  EXPECT_EQ(t.vocab[8].first, "q\"\\/\n\t");
  EXPECT_EQ(t.vocab[8].second, 8);
  ASSERT_EQ(t.merges.size(), 3u);
  EXPECT_EQ(t.merges[1], (std::pair<std::string, std::string>{"ab", "c"}));
  EXPECT_EQ(t.merges[2].second, "\xf0\x9f\x98\x80");
  json r = json::parse(rest);
  EXPECT_EQ(r["model"]["vocab"], json::object());
  EXPECT_EQ(r["model"]["merges"], json::array());
  EXPECT_EQ(r["model"]["dropout"], nullptr);
  EXPECT_EQ(r["added_tokens"][0]["id"], 9);
  EXPECT_EQ(r["version"], "1.0");
}

TEST(HfJsonTables, UnusualShapesGoToTheWholeDocumentParse) {
  BpeTables t;
  std::string rest;
  for (const std::string& text : {
           std::string(R"({"model": {"vocab": {"a": 1.5}}})"),                   // not an integer
           std::string(R"({"model": {"vocab": {"a": "1"}}})"),                   // a string id
           std::string(R"({"model": {"vocab": {"a": 0}, "merges": ["ab"]}})"),   // no space
           std::string(R"({"model": {"vocab": {"a": 0}, "merges": [["a"]]}})"),  // one element
           std::string(R"({"model": {"vocab": {"a\x": 0}}})"),                   // a bad escape
           std::string(R"({"model": {"vocab": {"\ud800": 0}}})"),                // a lone surrogate
           std::string(R"({"model": {"vocab": [1, 2]}})"),                       // not an object
           std::string(R"({"model": {"merges": []}})"),                          // no vocab
           std::string(R"({"model": {"vocab": {}}, "model": {"vocab": {}}})"),   // "model" twice
           std::string(R"({"model": {"vocab": {"a": 0})"),                       // truncated
       }) {
    t = {};
    EXPECT_FALSE(tok::split_bpe_tables(text, t, rest)) << text;
  }
  // ...whose errors still name the field.
  try {
    Tokenizer::from_json_text(R"({"model": {"type": "BPE", "vocab": {"a": 1.5}}})", "t.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "model.vocab.a");
  }
}

// Keys given twice and ids given twice: the fast reader defers to the
// whole-document reader's rules (JSON's last value wins).
TEST(HfJsonTables, DuplicatesFollowTheWholeDocumentReader) {
  for (const std::string& text : {std::string(R"({"model": {"vocab": {"a": 0, "b": 1, "a": 2}, "merges": []}})"),
                                  std::string(R"({"model": {"vocab": {"b": 0, "a": 0, "c": 1}, "merges": []}})")}) {
    tok::PipelineTokenizer fast(tok::load_hf_json(text, "d.json", true));
    tok::PipelineTokenizer slow(tok::load_hf_json(text, "d.json", false));
    ASSERT_EQ(fast.vocab_size(), slow.vocab_size()) << text;
    for (int32_t id = 0; id < fast.vocab_size(); ++id) EXPECT_EQ(fast.id_to_piece(id), slow.id_to_piece(id)) << text;
    for (const char* s : {"a", "b", "c", "abc"}) EXPECT_EQ(fast.encode(s, false), slow.encode(s, false)) << text;
  }
}

// A real tokenizer.json (SmolLM2, 49k entries): both readers build the same
// tokenizer (same ids for the llama.cpp test strings and a few more).
TEST(HfJsonTables, FastAndWholeDocumentReadersAgreeOnARealTokenizer) {
  const std::string path = test::shared_dir() + "/tokenizers/smollm2/tokenizer.json";
  const std::string text = test::slurp(path);
  tok::PipelineTokenizer fast(tok::load_hf_json(text, path, true));
  tok::PipelineTokenizer slow(tok::load_hf_json(text, path, false));
  ASSERT_EQ(fast.vocab_size(), slow.vocab_size());
  std::vector<std::string> samples = {"Hello world!", "  leading spaces\n\nand lines", "caf\u00e9 \U0001f600 日本語",
                                      "def f(x):\n    return x**2  # 12345", "<|im_start|>user\nhi<|im_end|>"};
  for (const std::string& s : test::read_inp(test::vocab_dir() + "/ggml-vocab-gpt-2.gguf.inp")) samples.push_back(s);
  for (const std::string& s : samples) {
    EXPECT_EQ(fast.encode(s, true), slow.encode(s, true)) << s;
    EXPECT_EQ(fast.decode(fast.encode(s, false), false), slow.decode(slow.encode(s, false), false));
  }
  for (int32_t id = 0; id < fast.vocab_size(); id += 97) EXPECT_EQ(fast.id_to_piece(id), slow.id_to_piece(id));
}

}  // namespace
}  // namespace kite
