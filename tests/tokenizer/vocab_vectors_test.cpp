// llama.cpp's tokenizer test vectors against the GGUF vocabularies, and
// Meta's Llama-2 tokenizer.model against the same SentencePiece vectors.
#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_test_util.h"

namespace kite {
namespace {

void check_vectors(const Tokenizer& tok, const std::string& name) {
  const auto inputs = test::read_inp(test::vocab_dir() + "/ggml-vocab-" + name + ".gguf.inp");
  const auto expected = test::read_out(test::vocab_dir() + "/ggml-vocab-" + name + ".gguf.out");
  ASSERT_EQ(inputs.size(), expected.size()) << name;
  ASSERT_GT(inputs.size(), 30u);
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(tok.encode(inputs[i], false), expected[i]) << name << " string " << i << ": \"" << inputs[i] << "\"";
  }
}

class GgufVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufVectors, MatchLlamaCppIds) {
  auto tok = Tokenizer::load(test::vocab_dir() + "/ggml-vocab-" + GetParam() + ".gguf");
  check_vectors(*tok, GetParam());
}

INSTANTIATE_TEST_SUITE_P(All, GgufVectors, ::testing::Values("llama-spm", "phi-3", "gpt-2", "starcoder"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(Llama2Model, MatchesLlamaSpmVectors) {
  auto tok = Tokenizer::load(test::shared_dir() + "/tokenizers/llama2/tokenizer.model");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  check_vectors(*tok, "llama-spm");
  // Same vocabulary as the GGUF: identical pieces.
  auto gguf = Tokenizer::load(test::vocab_dir() + "/ggml-vocab-llama-spm.gguf");
  ASSERT_EQ(gguf->vocab_size(), tok->vocab_size());
  for (int32_t id = 0; id < tok->vocab_size(); ++id) ASSERT_EQ(gguf->id_to_piece(id), tok->id_to_piece(id)) << id;
  // add_special adds BOS only.
  const auto ids = tok->encode("Hello world");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_NE(ids.back(), 2);
}

TEST(GgufVocab, SpecialIdsAndFlags) {
  auto spm = Tokenizer::load(test::vocab_dir() + "/ggml-vocab-phi-3.gguf");
  EXPECT_EQ(spm->bos_id(), 1);
  EXPECT_EQ(spm->eos_id(), 32000);
  EXPECT_TRUE(spm->is_special(1));
  EXPECT_FALSE(spm->is_special(spm->piece_to_id("\xE2\x96\x81the").value()));
  auto gpt2 = Tokenizer::load(test::vocab_dir() + "/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(gpt2->vocab_size(), 50257);
  EXPECT_EQ(gpt2->eos_id(), 50256);
  // GPT-2 adds no BOS by default.
  EXPECT_EQ(gpt2->encode("Hello"), gpt2->encode("Hello", false));
  EXPECT_EQ(gpt2->piece_to_id("<|endoftext|>"), 50256);
  // Special tokens in the text are single tokens.
  const auto ids = gpt2->encode("a<|endoftext|>b", false);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], 50256);
}

}  // namespace
}  // namespace kite
