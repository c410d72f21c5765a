// tokenizer_config.json's add_bos_token / add_eos_token: applied where
// transformers applies them (SentencePiece tokenizers, and the fast classes
// that rebuild their post-processor from the flags: Llama, CodeLlama, Gemma,
// Cohere); for every other class tokenizer.json's post-processor decides.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

// A tokenizer.json whose post-processor adds <s> (id 0) in front.
const std::string kJson = R"({
  "added_tokens": [{"id": 0, "content": "<s>", "special": true}, {"id": 1, "content": "</s>", "special": true}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "decoder": {"type": "ByteLevel"},
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                     "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
  "model": {"type": "BPE", "vocab": {"<s>": 0, "</s>": 1, "a": 2}, "merges": []}})";

std::vector<int32_t> ids_with(const std::string& config) {
  const auto dir =
      std::filesystem::path(testing::TempDir()) / ("tokcfg_" + std::to_string(std::hash<std::string>{}(config)));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << kJson;
  std::ofstream(dir / "tokenizer_config.json") << config;
  return Tokenizer::load(dir.string())->encode("a", true);
}

TEST(TokenizerConfig, AddBosTokenOnlyWhereTransformersAppliesIt) {
  const std::vector<int32_t> bos_a = {0, 2}, a = {2}, bos_a_eos = {0, 2, 1};
  // Llama-family fast classes rebuild the post-processor from the flags.
  EXPECT_EQ(ids_with(R"({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "add_bos_token": false})"), a);
  EXPECT_EQ(ids_with(R"({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                        "add_bos_token": true, "add_eos_token": true})"),
            bos_a_eos);
  EXPECT_EQ(ids_with(R"({"tokenizer_class": "GemmaTokenizerFast", "bos_token": "<s>", "add_bos_token": false})"), a);
  // Other classes: tokenizer.json's post-processor decides, whatever the flags say.
  EXPECT_EQ(ids_with(R"({"tokenizer_class": "Qwen2Tokenizer", "bos_token": "<s>", "add_bos_token": false})"), bos_a);
  EXPECT_EQ(ids_with(R"({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": false})"), bos_a);
  EXPECT_EQ(ids_with(R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "</s>"})"), bos_a);
  // The flags are still checked.
  EXPECT_THROW(ids_with(R"({"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": "yes"})"), Error);
}

}  // namespace
}  // namespace kite
