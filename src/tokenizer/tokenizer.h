#pragma once
// Exact tokenizers: ids identical to Hugging Face `tokenizers`,
// sentencepiece and llama.cpp for the Llama family.
//
// Sources: a model directory (tokenizer.json preferred, else tokenizer.model;
// tokenizer_config.json supplies add_bos_token/add_eos_token and the
// bos/eos token strings), a tokenizer.json, a SentencePiece tokenizer.model
// (a tokenizer_config.json next to either is honoured too), or a .gguf file
// with an embedded vocabulary.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kite {

namespace tok {
class DecodeRules;
}

class Tokenizer {
 public:
  // Throws kite::Error naming the file and field on malformed input.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
  // A tokenizer.json given as text; `source` names it in errors.
  static std::unique_ptr<Tokenizer> from_json_text(std::string_view text, const std::string& source);
  // A SentencePiece ModelProto (tokenizer.model bytes); `source` names it in errors.
  static std::unique_ptr<Tokenizer> from_sentencepiece_bytes(std::string_view bytes, const std::string& source);

  virtual ~Tokenizer();

  // add_special: add BOS (and EOS if configured) as the model's tokenizer
  // does by default (HF add_special_tokens=True). Special/added tokens in the
  // text are recognised as single tokens.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = true) const = 0;
  // Matches HF decode: invalid UTF-8 from byte pieces becomes U+FFFD, the
  // SentencePiece dummy-prefix space at the start is dropped. One deliberate
  // difference so that decode(encode(x), false) == x: with skip_special=false
  // the prefix space the encoder re-adds after each special token is dropped
  // too (HF gives "<s> Hi" for the ids of "<s>Hi"; Kite gives "<s>Hi"). Ids
  // outside the vocabulary throw kite::Error.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = true) const = 0;
  virtual std::string id_to_piece(int32_t id) const = 0;  // raw vocab string ("" when out of range)
  virtual std::optional<int32_t> piece_to_id(std::string_view piece) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual bool is_special(int32_t id) const = 0;

  // How ids become text, for IncrementalDetokenizer; null for tokenizers
  // implemented outside this library (the detokenizer then re-decodes).
  virtual const tok::DecodeRules* decode_rules() const { return nullptr; }
};

// Streaming detokenizer: push ids one at a time and get back only newly
// completed UTF-8 text, never a partial code point. Concatenating all push()
// results and flush() equals tokenizer.decode(all ids, skip_special).
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special = true);
  std::string push(int32_t id);
  // At the end of the stream: whatever is still held back (invalid trailing
  // bytes become U+FFFD as decode does).
  std::string flush();

 private:
  std::string emit(std::string text);
  std::string flush_run();

  const Tokenizer& tok_;
  const tok::DecodeRules* rules_;
  bool skip_special_;
  int strip_left_ = 0;            // leading spaces still to strip
  bool first_piece_ = true;       // no text token emitted yet (join_with_space)
  std::string pending_;           // held-back bytes
  std::vector<int32_t> all_ids_;  // fallback mode only
  size_t emitted_ = 0;            // fallback mode only
};

}  // namespace kite
