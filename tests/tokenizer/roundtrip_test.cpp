// decode(encode(x)) == x for every tokenizer, and IncrementalDetokenizer
// output equal to decode() while never emitting invalid UTF-8.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_test_util.h"

namespace kite {
namespace {

std::vector<std::string> all_strings(bool with_chatml) {
  auto s = test::varied_strings();
  for (auto& x : test::read_inp(test::vocab_dir() + "/ggml-vocab-gpt-2.gguf.inp")) s.push_back(x);
  s.push_back("<s>[INST] Hello! [/INST] Fine. </s><s>[INST] again [/INST]");
  s.push_back("</s>");
  s.push_back("<s> <s>  x</s>");
  if (with_chatml) {
    s.push_back("<|im_start|>user\nhi<|im_end|>");
    s.push_back("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n");
    s.push_back("x<|endoftext|>y");
  }
  return s;
}

std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip, size_t* invalid_chunks) {
  IncrementalDetokenizer detok(tok, skip);
  std::string out;
  for (const int32_t id : ids) {
    const std::string piece = detok.push(id);
    if (!tok::utf8_valid(piece)) ++*invalid_chunks;
    out += piece;
  }
  const std::string rest = detok.flush();
  if (!tok::utf8_valid(rest)) ++*invalid_chunks;
  return out + rest;
}

class RoundTrip : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Tokenizer> load() const {
    const std::string& p = GetParam();
    if (p.starts_with("gguf:")) return Tokenizer::load(test::vocab_dir() + "/ggml-vocab-" + p.substr(5) + ".gguf");
    return Tokenizer::load(test::shared_dir() + "/" + p);
  }
};

TEST_P(RoundTrip, DecodeInvertsEncode) {
  auto tok = load();
  const bool spm = !tok->decode_rules()->byte_level;
  for (const std::string& s : all_strings(GetParam().find("smollm2") != std::string::npos)) {
    // SentencePiece-style tokenizers escape ' ' as U+2581: a U+2581 in the
    // input decodes as a space (HF and sentencepiece alike).
    if (spm && s.find("\xE2\x96\x81") != std::string::npos) continue;
    const auto ids = tok->encode(s, false);
    EXPECT_EQ(tok->decode(ids, false), s) << "\"" << s << "\"";
    const auto with_bos = tok->encode(s, true);
    if (tok->bos_id() && !with_bos.empty() && with_bos.front() == *tok->bos_id() &&
        s.find("<s>") == std::string::npos && s.find("</s>") == std::string::npos) {
      EXPECT_EQ(tok->decode(with_bos, true), s) << "\"" << s << "\"";
    }
  }
}

TEST_P(RoundTrip, StreamingEqualsDecode) {
  auto tok = load();
  size_t invalid = 0;
  for (const std::string& s : all_strings(true)) {
    const auto ids = tok->encode(s, true);
    for (const bool skip : {true, false}) EXPECT_EQ(stream(*tok, ids, skip, &invalid), tok->decode(ids, skip)) << s;
  }
  EXPECT_EQ(invalid, 0u);
}

// Arbitrary id sequences: byte pieces that do not form valid UTF-8, specials
// in the middle, lone continuation bytes.
TEST_P(RoundTrip, StreamingEqualsDecodeOnRandomIds) {
  auto tok = load();
  std::mt19937 rng(1234);
  std::vector<int32_t> pool;
  for (int32_t id = 0; id < std::min(tok->vocab_size(), 600); ++id) pool.push_back(id);
  for (const char* piece : {"<0xE2>", "<0x82>", "<0xAC>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "\xC3\xA2",
                            "\xC2\x82", "\xC2\xAC", "\xC3\xB0", "\xC5\x81", "\xC2\xA2"})
    if (auto id = tok->piece_to_id(piece)) pool.insert(pool.end(), 30, *id);
  size_t invalid = 0;
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids(1 + rng() % 12);
    for (auto& id : ids) id = pool[rng() % pool.size()];
    for (const bool skip : {true, false}) {
      const std::string want = tok->decode(ids, skip);
      EXPECT_TRUE(tok::utf8_valid(want));
      EXPECT_EQ(stream(*tok, ids, skip, &invalid), want);
    }
  }
  EXPECT_EQ(invalid, 0u);
}

INSTANTIATE_TEST_SUITE_P(All, RoundTrip,
                         ::testing::Values("models/kite-ref/tokenizer.json", "models/kite-ref/tokenizer.model",
                                           "tokenizers/llama2/tokenizer.model", "tokenizers/smollm2/tokenizer.json",
                                           "gguf:llama-spm", "gguf:phi-3", "gguf:gpt-2", "gguf:starcoder"),
                         [](const auto& info) {
                           std::string n;
                           for (char c : info.param) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

TEST(Detokenizer, EmojiAcrossByteFallbackPieces) {
  auto tok = Tokenizer::load(test::shared_dir() + "/models/kite-ref/tokenizer.model");
  const std::string text = "ok \xF0\x9F\x98\x80\xE4\xBD\xA0 done";
  const auto ids = tok->encode(text, false);
  size_t byte_pieces = 0;
  for (const int32_t id : ids) byte_pieces += tok->id_to_piece(id).starts_with("<0x");
  ASSERT_GE(byte_pieces, 4u);  // at least the emoji is made of byte pieces
  IncrementalDetokenizer detok(*tok);
  std::vector<std::string> chunks;
  for (const int32_t id : ids) chunks.push_back(detok.push(id));
  chunks.push_back(detok.flush());
  std::string joined;
  for (const auto& c : chunks) {
    EXPECT_TRUE(tok::utf8_valid(c));
    joined += c;
  }
  EXPECT_EQ(joined, text);
  // No chunk carries part of the emoji.
  for (const auto& c : chunks)
    if (c.find("\xF0") != std::string::npos) {
      EXPECT_NE(c.find("\xF0\x9F\x98\x80"), std::string::npos);
    }
}

TEST(Detokenizer, InvalidBytesBecomeReplacementChars) {
  auto tok = Tokenizer::load(test::shared_dir() + "/models/kite-ref/tokenizer.model");
  const int32_t e2 = tok->piece_to_id("<0xE2>").value(), x82 = tok->piece_to_id("<0x82>").value();
  const int32_t a = tok->piece_to_id(
                           "\xE2\x96\x81"
                           "a")
                        .value();
  // HF ByteFallback: an invalid run becomes one U+FFFD per byte.
  const std::vector<int32_t> ids = {a, e2, x82, a};
  EXPECT_EQ(tok->decode(ids), "a\xEF\xBF\xBD\xEF\xBF\xBD a");
  IncrementalDetokenizer detok(*tok);
  EXPECT_EQ(detok.push(a), "a");
  EXPECT_EQ(detok.push(e2), "");
  EXPECT_EQ(detok.push(x82), "");
  EXPECT_EQ(detok.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");

  // Byte-level: lossy UTF-8 over all bytes; the held-back tail is released by flush().
  auto bl = Tokenizer::load(test::shared_dir() + "/tokenizers/smollm2/tokenizer.json");
  const auto euro = bl->encode("\xE2\x82\xAC", false);
  std::vector<int32_t> bytes;
  for (const char c : std::string("\xE2\x82")) {
    auto id = bl->piece_to_id(tok::byte_level_encode(std::string(1, c)));
    ASSERT_TRUE(id.has_value());
    bytes.push_back(*id);
  }
  EXPECT_EQ(bl->decode(bytes), "\xEF\xBF\xBD");
  IncrementalDetokenizer d2(*bl);
  EXPECT_EQ(d2.push(bytes[0]), "");
  EXPECT_EQ(d2.push(bytes[1]), "");
  EXPECT_EQ(d2.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(bl->decode(euro), "\xE2\x82\xAC");
}

// A Tokenizer from outside the library (no decode rules): the detokenizer
// falls back to re-decoding.
class Forwarding : public Tokenizer {
 public:
  explicit Forwarding(std::unique_ptr<Tokenizer> t) : t_(std::move(t)) {}
  std::vector<int32_t> encode(std::string_view s, bool add) const override { return t_->encode(s, add); }
  std::string decode(std::span<const int32_t> ids, bool skip) const override { return t_->decode(ids, skip); }
  std::string id_to_piece(int32_t id) const override { return t_->id_to_piece(id); }
  std::optional<int32_t> piece_to_id(std::string_view p) const override { return t_->piece_to_id(p); }
  int32_t vocab_size() const override { return t_->vocab_size(); }
  std::optional<int32_t> bos_id() const override { return t_->bos_id(); }
  std::optional<int32_t> eos_id() const override { return t_->eos_id(); }
  bool is_special(int32_t id) const override { return t_->is_special(id); }

 private:
  std::unique_ptr<Tokenizer> t_;
};

TEST(Detokenizer, FallbackForForeignTokenizers) {
  Forwarding tok(Tokenizer::load(test::shared_dir() + "/models/kite-ref/tokenizer.model"));
  ASSERT_EQ(tok.decode_rules(), nullptr);
  size_t invalid = 0;
  for (const std::string& s : test::varied_strings()) {
    const auto ids = tok.encode(s, true);
    EXPECT_EQ(stream(tok, ids, true, &invalid), tok.decode(ids, true)) << s;
  }
  EXPECT_EQ(invalid, 0u);
}

TEST(Detokenizer, OutOfRangeIdThrows) {
  auto tok = Tokenizer::load(test::shared_dir() + "/models/kite-ref/tokenizer.json");
  const std::vector<int32_t> bad = {5, 99999};
  EXPECT_THROW(tok->decode(bad), Error);
  IncrementalDetokenizer detok(*tok);
  EXPECT_THROW(detok.push(-1), Error);
}

}  // namespace
}  // namespace kite
