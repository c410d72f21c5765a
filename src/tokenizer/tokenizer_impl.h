#pragma once
// Internals of kite_tokenizer: one encode pipeline (added-token split ->
// normalizer -> pre-tokenizer -> BPE model -> post-processor) and one
// decode description, filled in by the tokenizer.json, tokenizer.model and
// GGUF loaders.
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kite::tok {

// ---- UTF-8 -------------------------------------------------------------------

// One step of a UTF-8 scan at `pos`: a valid code point of `len` bytes, an
// invalid maximal subpart of `len` bytes, or a valid prefix cut off by the end
// of the input (Truncated, `len` bytes up to the end).
struct Utf8Step {
  enum Kind { Valid, Invalid, Truncated } kind;
  size_t len;
  uint32_t cp;  // Valid only
};
Utf8Step utf8_step(std::string_view s, size_t pos);
// Length of the next "character" for splitting: a valid code point, or 1 byte.
size_t utf8_char_len(std::string_view s, size_t pos);
void append_utf8(std::string& out, uint32_t cp);
// Like Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool utf8_valid(std::string_view s);
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
inline constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581

// GPT-2 byte <-> unicode mapping used by ByteLevel.
struct ByteLevelMap {
  std::array<std::string, 256> byte_to_str;  // UTF-8 of the mapped char
  std::array<int16_t, 324> cp_to_byte;       // -1 when not a mapped char
};
const ByteLevelMap& byte_level_map();
std::string byte_level_encode(std::string_view bytes);
// Maps every char back to its byte; nullopt if a char is not in the map.
std::optional<std::string> byte_level_decode(std::string_view text);

// ---- regex (PCRE2, UTF + UCP, JIT) ---------------------------------------------

class Regex {
 public:
  // Throws Error(source, field, ...) with PCRE2's message on a bad pattern.
  Regex(const std::string& pattern, const std::string& source, const std::string& field);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-empty matches, left to right, as [begin, end) byte offsets.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// Named pre-tokenizer regexes.
extern const char* const kRegexGpt2;
extern const char* const kRegexLlama3;
extern const char* const kRegexQwen2;

// ---- vocabulary ------------------------------------------------------------------

enum class TokenAttr : uint8_t { Normal, Unknown, Control, UserDefined, Unused, Byte, Absent };

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct Vocab {
  std::vector<std::string> pieces;  // by id
  std::vector<float> scores;        // SentencePiece scores (empty for rank BPE)
  std::vector<TokenAttr> attrs;
  std::vector<uint8_t> special;  // 1 = special (skipped by decode(skip_special))
  // piece -> id: open addressing over a power-of-two table of at least
  // twice the pieces; a slot holds (hash high 32 bits << 32) | (id + 1), 0 =
  // empty. No per-piece allocation, one probe sequence per lookup.
  std::vector<uint64_t> index;
  std::array<int32_t, 256> byte_ids;  // <0xXX> pieces, -1 when absent

  // Builds `index` and `byte_ids` (byte pieces: attr Byte, or any "<0xXX>"
  // when `byte_by_name`). Earlier ids win for duplicate pieces; returns
  // whether any piece stands at two ids.
  bool finish(bool byte_by_name);
  std::optional<int32_t> find(std::string_view piece) const {
    if (index.empty()) return std::nullopt;
    const uint64_t h = std::hash<std::string_view>{}(piece), mask = index.size() - 1;
    for (uint64_t at = h & mask;; at = (at + 1) & mask) {
      const uint64_t slot = index[at];
      if (slot == 0) return std::nullopt;
      if ((slot >> 32) == (h >> 32)) {
        const int32_t id = int32_t(uint32_t(slot)) - 1;
        if (pieces[size_t(id)] == piece) return id;
      }
    }
  }
  int32_t size() const { return static_cast<int32_t>(pieces.size()); }
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// ---- normalizer / pre-tokenizer ------------------------------------------------

struct NormOp {
  enum Kind { Prepend, Replace, ReplaceRegex, Lowercase, Identity, RemoveExtraSpaces, Nfc, Nfd, Nfkc, Nfkd } kind;
  std::string a, b;  // Prepend: a; Replace: a -> b
  std::shared_ptr<Regex> re;
};
std::string normalize(const std::vector<NormOp>& ops, std::string_view text);
// Unicode normalization forms (ICU); false when this build has no ICU.
bool have_unicode_normalization();
std::string unicode_normalize(NormOp::Kind form, std::string_view text);  // form: Nfc, Nfd, Nfkc or Nfkd
// Appends the full lowercase mapping of `cp`; false (nothing appended) without ICU.
bool unicode_lower(uint32_t cp, std::string& out);
void replace_all(std::string& s, std::string_view from, std::string_view to);

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreOp {
  enum Kind { Split, ByteLevel, Metaspace, WhitespaceSplit } kind;
  std::shared_ptr<Regex> re;  // Split, ByteLevel(use_regex)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  int prepend = 0;                // Metaspace: 0 never, 1 first, 2 always
  bool split = true;              // Metaspace
};
// Splits one added-token-free segment into words. `first`: the segment
// starts the text (Metaspace prepend_scheme "first").
void pre_tokenize(const std::vector<PreOp>& ops, std::string_view text, bool first, std::vector<std::string>& words);
void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                      bool invert, std::vector<std::string>& out);

// ---- models ----------------------------------------------------------------------

class Model {
 public:
  virtual ~Model() = default;
  virtual void encode_word(std::string_view word, std::vector<int32_t>& out) const = 0;
};

// Rank-ordered BPE (HF tokenizers BPE, llama.cpp BPE).
struct BpeOptions {
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<int32_t> unk_id;
};
class BpeModel final : public Model {
 public:
  BpeModel(const Vocab& vocab, BpeOptions opts) : vocab_(vocab), opts_(opts) {}
  // Later duplicates of a pair replace earlier ones (as HF does).
  void add_merge(int32_t a, int32_t b, int32_t merged, int32_t rank);
  void reserve_merges(size_t n) { merges_.reserve(n); }
  void encode_word(std::string_view word, std::vector<int32_t>& out) const override;

 private:
  const Vocab& vocab_;
  BpeOptions opts_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a,b) -> (rank, merged)
};

// Score-ordered BPE of SentencePiece with byte fallback.
class SpmBpeModel final : public Model {
 public:
  SpmBpeModel(const Vocab& vocab, bool byte_fallback, std::optional<int32_t> unk_id)
      : vocab_(vocab), byte_fallback_(byte_fallback), unk_id_(unk_id) {}
  void encode_word(std::string_view word, std::vector<int32_t>& out) const override;

 private:
  const Vocab& vocab_;
  bool byte_fallback_;
  std::optional<int32_t> unk_id_;
};

// ---- decoding --------------------------------------------------------------------

class DecodeRules {
 public:
  bool byte_level = false;           // pieces are ByteLevel chars: all bytes joined, then lossy UTF-8
  bool byte_fallback = false;        // <0xXX> runs: valid UTF-8 or one U+FFFD per byte (HF ByteFallback)
  int strip_leading = 0;             // spaces stripped from the start of the text (Strip / Metaspace decoder)
  bool strip_after_special = false;  // also after each emitted special token (the encoder re-adds the prefix there)
  bool join_with_space = false;      // no decoder: HF joins tokens with ' '
  std::vector<std::pair<std::string, std::string>> replaces;  // per-piece text replacement

  // Per id, filled by prepare(): the text (or bytes when byte_level) of a
  // piece, and its byte value for byte-fallback pieces (-1 otherwise).
  std::vector<std::string> text;
  std::vector<int16_t> byte;
  std::vector<uint8_t> special;
  void prepare(const Vocab& vocab);
};

// ---- the pipeline tokenizer -----------------------------------------------------

struct TokenizerSpec {
  std::string source;
  Vocab vocab;
  std::vector<AddedToken> added;
  std::vector<NormOp> normalizer;
  std::vector<PreOp> pre_tokenizer;
  std::unique_ptr<Model> model;  // references `vocab`: the spec must not be moved after model is built
  DecodeRules decode;
  std::vector<int32_t> prefix_ids, suffix_ids;  // add_special
  std::optional<int32_t> bos, eos;
  size_t cache_max_word = 256;  // words up to this many bytes are cached
};

class PipelineTokenizer final : public Tokenizer {
 public:
  explicit PipelineTokenizer(std::unique_ptr<TokenizerSpec> spec);
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string id_to_piece(int32_t id) const override;
  std::optional<int32_t> piece_to_id(std::string_view piece) const override;
  int32_t vocab_size() const override { return spec_->vocab.size(); }
  std::optional<int32_t> bos_id() const override { return spec_->bos; }
  std::optional<int32_t> eos_id() const override { return spec_->eos; }
  bool is_special(int32_t id) const override;
  const DecodeRules* decode_rules() const override { return &spec_->decode; }
  TokenizerSpec& spec() { return *spec_; }

 private:
  struct TrieNode {
    std::unordered_map<uint8_t, int32_t> next;
    int32_t token = -1;  // index into spec_->added
  };
  void encode_segment(std::string_view seg, bool first, std::vector<int32_t>& out) const;
  void encode_word_cached(std::string_view word, std::vector<int32_t>& out) const;
  // Longest added token starting at `pos`: (index into added, length) or (-1, 0).
  std::pair<int32_t, size_t> match_added(std::string_view text, size_t pos) const;

  std::unique_ptr<TokenizerSpec> spec_;
  std::vector<TrieNode> trie_;
  std::array<bool, 256> first_byte_{};
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

// ---- loaders --------------------------------------------------------------------

// fast_tables: read model.vocab and model.merges with the dedicated scanner
// when they are plain (hf_json_tables.h); false: the whole document through
// nlohmann::json (tests compare the two).
std::unique_ptr<TokenizerSpec> load_hf_json(std::string_view text, const std::string& source, bool fast_tables = true);
std::unique_ptr<TokenizerSpec> load_sentencepiece(std::string_view bytes, const std::string& source);
std::unique_ptr<TokenizerSpec> load_gguf_vocab(const std::string& path);

// Builds the model-independent parts shared by SentencePiece-style loaders:
// added tokens from CONTROL/USER_DEFINED/UNKNOWN pieces, the dummy-prefix
// normalizer and the decoder.
void setup_spm_pipeline(TokenizerSpec& spec, bool add_dummy_prefix, bool remove_extra_whitespaces,
                        bool escape_whitespaces, bool byte_fallback, std::optional<int32_t> unk_id);

}  // namespace kite::tok
