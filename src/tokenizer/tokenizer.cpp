// Tokenizer::load dispatch, tokenizer_config.json, and the pipeline
// tokenizer shared by all formats.
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite {

Tokenizer::~Tokenizer() = default;

namespace tok {

namespace {

std::optional<int> parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || !p.starts_with("<0x") || p[5] != '>') return std::nullopt;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = p[i];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return std::nullopt;
    v = v * 16 + d;
  }
  return v;
}

bool is_space_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

bool Vocab::finish(bool byte_by_name) {
  const size_t n = pieces.size();
  attrs.resize(n, TokenAttr::Normal);
  special.resize(n, 0);
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  index.assign(cap, 0);
  const uint64_t mask = cap - 1;
  byte_ids.fill(-1);
  bool duplicate = false;
  for (size_t i = 0; i < n; ++i) {
    if (attrs[i] == TokenAttr::Absent) continue;
    const uint64_t h = std::hash<std::string_view>{}(pieces[i]);
    for (uint64_t at = h & mask;; at = (at + 1) & mask) {
      uint64_t& slot = index[at];
      if (slot == 0) {
        slot = ((h >> 32) << 32) | uint64_t(i + 1);
        break;
      }
      if ((slot >> 32) == (h >> 32) && pieces[uint32_t(slot) - 1] == pieces[i]) {
        duplicate = true;
        break;  // keeps the first id
      }
    }
    if (attrs[i] == TokenAttr::Byte || byte_by_name) {
      if (auto b = parse_byte_piece(pieces[i]); b && byte_ids[*b] < 0) byte_ids[*b] = static_cast<int32_t>(i);
    }
  }
  return duplicate;
}

void DecodeRules::prepare(const Vocab& vocab) {
  const size_t n = vocab.pieces.size();
  text.assign(n, {});
  byte.assign(n, -1);
  special = vocab.special;
  for (size_t i = 0; i < n; ++i) {
    const std::string& piece = vocab.pieces[i];
    if (byte_level) {
      auto raw = byte_level_decode(piece);
      text[i] = raw ? std::move(*raw) : piece;
      continue;
    }
    if (byte_fallback) {
      if (auto b = parse_byte_piece(piece)) {
        byte[i] = static_cast<int16_t>(*b);
        continue;
      }
    }
    std::string t = piece;
    for (const auto& [from, to] : replaces) replace_all(t, from, to);
    text[i] = utf8_valid(t) ? std::move(t) : utf8_lossy(t);
  }
}

PipelineTokenizer::PipelineTokenizer(std::unique_ptr<TokenizerSpec> spec) : spec_(std::move(spec)) {
  KITE_CHECK(spec_->model != nullptr, "tokenizer without a model");
  spec_->decode.prepare(spec_->vocab);
  trie_.emplace_back();
  for (size_t t = 0; t < spec_->added.size(); ++t) {
    const std::string& content = spec_->added[t].content;
    if (content.empty()) continue;
    first_byte_[static_cast<uint8_t>(content[0])] = true;
    int32_t node = 0;
    for (const char c : content) {
      const uint8_t b = static_cast<uint8_t>(c);
      auto it = trie_[node].next.find(b);
      if (it == trie_[node].next.end()) {
        trie_.emplace_back();
        const int32_t child = static_cast<int32_t>(trie_.size() - 1);
        trie_[node].next.emplace(b, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    if (trie_[node].token < 0) trie_[node].token = static_cast<int32_t>(t);
  }
}

std::pair<int32_t, size_t> PipelineTokenizer::match_added(std::string_view text, size_t pos) const {
  int32_t node = 0, best = -1;
  size_t best_len = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = trie_[node].next.find(static_cast<uint8_t>(text[i]));
    if (it == trie_[node].next.end()) break;
    node = it->second;
    if (trie_[node].token >= 0) {
      best = trie_[node].token;
      best_len = i + 1 - pos;
    }
  }
  return {best, best_len};
}

std::vector<int32_t> PipelineTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special) out.insert(out.end(), spec_->prefix_ids.begin(), spec_->prefix_ids.end());
  size_t seg_start = 0, pos = 0;
  while (pos < text.size()) {
    if (first_byte_[static_cast<uint8_t>(text[pos])]) {
      const auto [idx, len] = match_added(text, pos);
      if (idx >= 0) {
        const AddedToken& t = spec_->added[idx];
        size_t seg_end = pos, after = pos + len;
        bool ok = true;
        if (t.single_word) {
          auto word_byte = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
          ok = (pos == 0 || !word_byte(text[pos - 1])) && (after == text.size() || !word_byte(text[after]));
        }
        if (ok) {
          if (t.lstrip)
            while (seg_end > seg_start && is_space_byte(text[seg_end - 1])) --seg_end;
          if (t.rstrip)
            while (after < text.size() && is_space_byte(text[after])) ++after;
          encode_segment(text.substr(seg_start, seg_end - seg_start), seg_start == 0, out);
          out.push_back(t.id);
          pos = seg_start = after;
          continue;
        }
      }
    }
    ++pos;
  }
  encode_segment(text.substr(seg_start), seg_start == 0, out);
  if (add_special) out.insert(out.end(), spec_->suffix_ids.begin(), spec_->suffix_ids.end());
  return out;
}

void PipelineTokenizer::encode_segment(std::string_view seg, bool first, std::vector<int32_t>& out) const {
  if (seg.empty()) return;
  const std::string norm = normalize(spec_->normalizer, seg);
  if (spec_->pre_tokenizer.empty()) {
    encode_word_cached(norm, out);
    return;
  }
  std::vector<std::string> words;
  pre_tokenize(spec_->pre_tokenizer, norm, first, words);
  for (const std::string& w : words) encode_word_cached(w, out);
}

void PipelineTokenizer::encode_word_cached(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() > spec_->cache_max_word) {
    spec_->model->encode_word(word, out);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  spec_->model->encode_word(word, out);
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() > 100000) cache_.clear();
  cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + before, out.end()));
}

std::string PipelineTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const DecodeRules& r = spec_->decode;
  const int32_t n = vocab_size();
  for (const int32_t id : ids)
    if (id < 0 || id >= n) fail("decode", "ids", "token id {} is outside the vocabulary [0, {})", id, n);
  std::string out;
  int strip_left = r.strip_leading;
  auto emit = [&](std::string_view t) {
    while (strip_left > 0 && !t.empty() && t[0] == ' ') {
      t.remove_prefix(1);
      --strip_left;
    }
    if (!t.empty()) strip_left = 0;
    out.append(t);
  };
  if (r.byte_level) {
    std::string bytes;
    for (const int32_t id : ids)
      if (!(skip_special && r.special[id])) bytes += r.text[id];
    emit(utf8_lossy(bytes));
    return out;
  }
  std::string run;  // consecutive byte-fallback pieces
  auto flush_run = [&] {
    if (run.empty()) return;
    if (utf8_valid(run)) {
      emit(run);
    } else {
      std::string repl;
      for (size_t i = 0; i < run.size(); ++i) repl += kReplacementChar;
      emit(repl);
    }
    run.clear();
  };
  bool first = true;
  for (const int32_t id : ids) {
    if (skip_special && r.special[id]) continue;
    if (r.byte[id] >= 0) {
      run += static_cast<char>(r.byte[id]);
      continue;
    }
    flush_run();
    if (r.join_with_space && !first) emit(" ");
    first = false;
    emit(r.text[id]);
    if (r.special[id] && r.strip_after_special) strip_left = std::max(strip_left, std::max(r.strip_leading, 1));
  }
  flush_run();
  return out;
}

std::string PipelineTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return spec_->vocab.pieces[id];
}

std::optional<int32_t> PipelineTokenizer::piece_to_id(std::string_view piece) const { return spec_->vocab.find(piece); }

bool PipelineTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && spec_->vocab.special[id] != 0;
}

void setup_spm_pipeline(TokenizerSpec& spec, bool add_dummy_prefix, bool remove_extra_whitespaces,
                        bool escape_whitespaces, bool byte_fallback, std::optional<int32_t> unk_id) {
  Vocab& v = spec.vocab;
  for (int32_t id = 0; id < v.size(); ++id) {
    const TokenAttr a = v.attrs[id];
    v.special[id] = a == TokenAttr::Control || a == TokenAttr::Unknown;
    if ((a == TokenAttr::Control || a == TokenAttr::UserDefined || a == TokenAttr::Unknown) && !v.pieces[id].empty())
      spec.added.push_back({v.pieces[id], id, v.special[id] != 0, false, false, false});
  }
  if (remove_extra_whitespaces) spec.normalizer.push_back({NormOp::RemoveExtraSpaces, {}, {}, nullptr});
  if (add_dummy_prefix) spec.normalizer.push_back({NormOp::Prepend, " ", {}, nullptr});
  if (escape_whitespaces) spec.normalizer.push_back({NormOp::Replace, " ", std::string(kSpmSpace), nullptr});
  spec.model = std::make_unique<SpmBpeModel>(spec.vocab, byte_fallback, unk_id);
  spec.decode.replaces = {{std::string(kSpmSpace), " "}};
  spec.decode.byte_fallback = true;
  spec.decode.strip_leading = add_dummy_prefix ? 1 : 0;
  spec.decode.strip_after_special = add_dummy_prefix;
  spec.cache_max_word = 64;
}

namespace {

// Whether transformers applies add_bos_token/add_eos_token for this
// tokenizer: slow (SentencePiece) tokenizers always do; of the fast ones,
// only the classes that rebuild their post-processor from those flags
// (LlamaTokenizerFast and its kin). For every other class tokenizer.json's
// post-processor alone decides what is added.
bool config_flags_apply(const nlohmann::json& j, bool from_sentencepiece) {
  if (from_sentencepiece) return true;
  std::string cls = j.contains("tokenizer_class") && j["tokenizer_class"].is_string()
                        ? j["tokenizer_class"].get<std::string>()
                        : std::string();
  if (cls.ends_with("Fast")) cls.resize(cls.size() - 4);
  return cls == "LlamaTokenizer" || cls == "CodeLlamaTokenizer" || cls == "GemmaTokenizer" || cls == "CohereTokenizer";
}

// tokenizer_config.json: bos/eos token strings and add_bos_token/add_eos_token
// (where transformers applies them: config_flags_apply).
void apply_tokenizer_config(TokenizerSpec& spec, const std::string& path, bool from_sentencepiece) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path, "", "not valid JSON: {}", e.what());
  }
  if (!j.is_object()) fail(path, "", "expected a JSON object at the top level");
  auto token_id = [&](const char* key) -> std::optional<int32_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const nlohmann::json& t = j[key];
    std::string content;
    if (t.is_string())
      content = t.get<std::string>();
    else if (t.is_object() && t.contains("content") && t["content"].is_string())
      content = t["content"].get<std::string>();
    else
      fail(path, key, "expected a string or an object with a string \"content\"");
    auto id = spec.vocab.find(content);
    if (!id) fail(path, key, "token {:?} is not in the vocabulary", content);
    return id;
  };
  if (auto id = token_id("bos_token")) spec.bos = id;
  if (auto id = token_id("eos_token")) spec.eos = id;
  auto flag = [&](const char* key) -> std::optional<bool> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_boolean()) fail(path, key, "expected a boolean, found {}", j[key].type_name());
    return j[key].get<bool>();
  };
  if (!config_flags_apply(j, from_sentencepiece)) {
    for (const char* key : {"add_bos_token", "add_eos_token"}) flag(key);  // still type-checked
    return;
  }
  if (auto add = flag("add_bos_token")) {
    if (*add && !spec.bos) fail(path, "add_bos_token", "is true but there is no bos_token");
    spec.prefix_ids.clear();
    if (*add) spec.prefix_ids.push_back(*spec.bos);
  }
  if (auto add = flag("add_eos_token")) {
    if (*add && !spec.eos) fail(path, "add_eos_token", "is true but there is no eos_token");
    spec.suffix_ids.clear();
    if (*add) spec.suffix_ids.push_back(*spec.eos);
  }
}

std::string read_binary(const std::string& path) {
  auto f = MappedFile::open(path);
  return std::string(reinterpret_cast<const char*>(f->data()), f->size());
}

}  // namespace

}  // namespace tok

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::string json = (fs::path(path) / "tokenizer.json").string();
    const std::string model = (fs::path(path) / "tokenizer.model").string();
    const std::string config = (fs::path(path) / "tokenizer_config.json").string();
    std::unique_ptr<tok::TokenizerSpec> spec;
    const bool from_json = file_exists(json);
    if (from_json)
      spec = tok::load_hf_json(read_text_file(json), json);
    else if (file_exists(model))
      spec = tok::load_sentencepiece(tok::read_binary(model), model);
    else
      fail(path, "", "directory has neither tokenizer.json nor tokenizer.model");
    if (file_exists(config)) tok::apply_tokenizer_config(*spec, config, !from_json);
    return std::make_unique<tok::PipelineTokenizer>(std::move(spec));
  }
  if (!file_exists(path)) fail(path, "", "no such file or directory");
  const std::string ext = fs::path(path).extension().string();
  std::string head;
  {
    auto f = MappedFile::open(path);
    head.assign(reinterpret_cast<const char*>(f->data()), std::min<size_t>(f->size(), 64));
  }
  if (ext == ".gguf" || head.starts_with("GGUF"))
    return std::make_unique<tok::PipelineTokenizer>(tok::load_gguf_vocab(path));
  const size_t first = head.find_first_not_of(" \t\r\n");
  std::unique_ptr<tok::TokenizerSpec> spec;
  const bool from_json = ext == ".json" || (first != std::string::npos && head[first] == '{');
  if (from_json)
    spec = tok::load_hf_json(read_text_file(path), path);
  else
    spec = tok::load_sentencepiece(tok::read_binary(path), path);
  // A tokenizer file inside a model directory: honour its tokenizer_config.json.
  const std::string config = (fs::path(path).parent_path() / "tokenizer_config.json").string();
  if (fs::path(path).filename() != "tokenizer_config.json" && file_exists(config))
    tok::apply_tokenizer_config(*spec, config, !from_json);
  return std::make_unique<tok::PipelineTokenizer>(std::move(spec));
}

std::unique_ptr<Tokenizer> Tokenizer::from_json_text(std::string_view text, const std::string& source) {
  return std::make_unique<tok::PipelineTokenizer>(tok::load_hf_json(text, source));
}

std::unique_ptr<Tokenizer> Tokenizer::from_sentencepiece_bytes(std::string_view bytes, const std::string& source) {
  return std::make_unique<tok::PipelineTokenizer>(tok::load_sentencepiece(bytes, source));
}

}  // namespace kite
