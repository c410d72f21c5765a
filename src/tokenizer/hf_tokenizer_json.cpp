// Hugging Face tokenizer.json: BPE model, added tokens, normalizers,
// pre-tokenizers, decoders and the post-processor.
//
// Supported: model BPE (vocab + merges as "a b" strings or ["a", "b"] pairs,
// byte_fallback, fuse_unk, ignore_merges, unk_token); normalizers Sequence,
// Prepend, Replace, Lowercase, NFC, NFD, NFKC, NFKD (ICU; refused in a build
// without it); pre-tokenizers Sequence,
// ByteLevel, Split, Digits, Metaspace, Whitespace, WhitespaceSplit,
// Punctuation; decoders Sequence, ByteLevel, Replace, ByteFallback, Fuse,
// Strip, Metaspace; post-processors TemplateProcessing, ByteLevel,
// RobertaProcessing, BertProcessing, Sequence.
#include <array>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/parallel.h"
#include "tokenizer/hf_json_tables.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

using nlohmann::json;

class JsonLoader {
 public:
  explicit JsonLoader(const std::string& source) : source_(source) {}

  [[noreturn]] void bad(const std::string& field, const std::string& msg) const { fail(source_, field, "{}", msg); }

  const json& object_field(const json& j, const std::string& field, const char* key) const {
    if (!j.contains(key)) bad(field + "." + key, "missing");
    return j[key];
  }
  std::string string_of(const json& j, const std::string& field) const {
    if (!j.is_string()) bad(field, fmt::format("expected a string, found {}", j.type_name()));
    return j.get<std::string>();
  }
  std::string get_string(const json& j, const std::string& field, const char* key, const char* def = nullptr) const {
    if (!j.contains(key) || j[key].is_null()) {
      if (def) return def;
      bad(field + "." + key, "missing");
    }
    return string_of(j[key], field + "." + key);
  }
  bool get_bool(const json& j, const std::string& field, const char* key, bool def) const {
    if (!j.contains(key) || j[key].is_null()) return def;
    if (!j[key].is_boolean()) bad(field + "." + key, fmt::format("expected a boolean, found {}", j[key].type_name()));
    return j[key].get<bool>();
  }
  int64_t get_int(const json& j, const std::string& field, const char* key) const {
    if (!j.contains(key)) bad(field + "." + key, "missing");
    if (!j[key].is_number_integer())
      bad(field + "." + key, fmt::format("expected an integer, found {}", j[key].type_name()));
    return j[key].get<int64_t>();
  }
  const json& array_field(const json& j, const std::string& field, const char* key) const {
    if (!j.contains(key) || !j[key].is_array()) bad(field + "." + key, "expected an array");
    return j[key];
  }
  std::string type_of(const json& j, const std::string& field) const {
    if (!j.is_object()) bad(field, fmt::format("expected an object, found {}", j.type_name()));
    return get_string(j, field, "type");
  }
  // {"String": "..."} or {"Regex": "..."} as a compiled regex.
  std::shared_ptr<Regex> pattern(const json& j, const std::string& field) const {
    const std::string f = field + ".pattern";
    if (!j.contains("pattern") || !j["pattern"].is_object()) bad(f, "expected {\"String\": ...} or {\"Regex\": ...}");
    const json& p = j["pattern"];
    if (p.contains("Regex")) return std::make_shared<Regex>(string_of(p["Regex"], f + ".Regex"), source_, f + ".Regex");
    if (p.contains("String"))
      return std::make_shared<Regex>(escape(string_of(p["String"], f + ".String")), source_, f + ".String");
    bad(f, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  static std::string escape(std::string_view s) {
    std::string out;
    for (const char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x80 && !std::isalnum(u) && c != '_') out += '\\';
      out += c;
    }
    return out;
  }

  void normalizer(const json& j, const std::string& field, std::vector<NormOp>& ops) const {
    if (j.is_null()) return;
    const std::string type = type_of(j, field);
    if (type == "Sequence") {
      const json& list = array_field(j, field, "normalizers");
      for (size_t i = 0; i < list.size(); ++i) normalizer(list[i], fmt::format("{}.normalizers[{}]", field, i), ops);
    } else if (type == "Prepend") {
      ops.push_back({NormOp::Prepend, get_string(j, field, "prepend"), {}, nullptr});
    } else if (type == "Replace") {
      const std::string content = get_string(j, field, "content");
      const json& p = object_field(j, field, "pattern");
      if (p.is_object() && p.contains("String"))
        ops.push_back({NormOp::Replace, string_of(p["String"], field + ".pattern.String"), content, nullptr});
      else
        ops.push_back({NormOp::ReplaceRegex, {}, content, pattern(j, field)});
    } else if (type == "Lowercase") {
      ops.push_back({NormOp::Lowercase, {}, {}, nullptr});
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      if (!have_unicode_normalization())
        bad(field + ".type", fmt::format("normalizer {:?} needs ICU, which this build of Kite lacks; rebuild with "
                                         "libicu-dev installed (scripts/setup.sh)",
                                         type));
      const NormOp::Kind k = type == "NFC"    ? NormOp::Nfc
                             : type == "NFD"  ? NormOp::Nfd
                             : type == "NFKC" ? NormOp::Nfkc
                                              : NormOp::Nfkd;
      ops.push_back({k, {}, {}, nullptr});
    } else {
      bad(field + ".type", fmt::format("normalizer {:?} is not supported", type));
    }
  }

  void pre_tokenizer(const json& j, const std::string& field, std::vector<PreOp>& ops) const {
    if (j.is_null()) return;
    const std::string type = type_of(j, field);
    PreOp op{};
    if (type == "Sequence") {
      const json& list = array_field(j, field, "pretokenizers");
      for (size_t i = 0; i < list.size(); ++i)
        pre_tokenizer(list[i], fmt::format("{}.pretokenizers[{}]", field, i), ops);
      return;
    } else if (type == "ByteLevel") {
      op.kind = PreOp::ByteLevel;
      op.add_prefix_space = get_bool(j, field, "add_prefix_space", true);
      if (get_bool(j, field, "use_regex", true)) op.re = std::make_shared<Regex>(kRegexGpt2, source_, field);
    } else if (type == "Split") {
      op.kind = PreOp::Split;
      op.re = pattern(j, field);
      op.invert = get_bool(j, field, "invert", false);
      op.behavior = behavior(get_string(j, field, "behavior"), field + ".behavior");
    } else if (type == "Digits") {
      op.kind = PreOp::Split;
      op.re = std::make_shared<Regex>(get_bool(j, field, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                                      source_, field);
      op.behavior = SplitBehavior::Isolated;
    } else if (type == "Metaspace") {
      op.kind = PreOp::Metaspace;
      metaspace(j, field, op.replacement, op.prepend);
      op.split = get_bool(j, field, "split", true);
    } else if (type == "Whitespace") {
      op.kind = PreOp::Split;
      op.re = std::make_shared<Regex>(R"(\w+|[^\w\s]+)", source_, field);
      op.behavior = SplitBehavior::Removed;
      op.invert = true;
    } else if (type == "WhitespaceSplit") {
      op.kind = PreOp::WhitespaceSplit;
    } else if (type == "Punctuation") {
      op.kind = PreOp::Split;
      op.re = std::make_shared<Regex>(R"([\p{P}\x21-\x2F\x3A-\x40\x5B-\x60\x7B-\x7E])", source_, field);
      op.behavior = behavior(get_string(j, field, "behavior", "Isolated"), field + ".behavior");
    } else {
      bad(field + ".type", fmt::format("pre-tokenizer {:?} is not supported", type));
    }
    ops.push_back(std::move(op));
  }

  SplitBehavior behavior(const std::string& b, const std::string& field) const {
    if (b == "Removed") return SplitBehavior::Removed;
    if (b == "Isolated") return SplitBehavior::Isolated;
    if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (b == "Contiguous") return SplitBehavior::Contiguous;
    bad(field, fmt::format("unknown split behavior {:?}", b));
  }

  // Metaspace's replacement and prepend scheme (0 never, 1 first, 2 always).
  void metaspace(const json& j, const std::string& field, std::string& replacement, int& prepend) const {
    replacement = get_string(j, field, "replacement", "\xE2\x96\x81");
    if (replacement.empty()) bad(field + ".replacement", "is empty");
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string s = get_string(j, field, "prepend_scheme");
      if (s == "always")
        prepend = 2;
      else if (s == "first")
        prepend = 1;
      else if (s == "never")
        prepend = 0;
      else
        bad(field + ".prepend_scheme", fmt::format("expected always, first or never, found {:?}", s));
    } else {
      prepend = get_bool(j, field, "add_prefix_space", true) ? 2 : 0;
    }
  }

  void decoder(const json& j, const std::string& field, DecodeRules& r) const {
    const std::string type = type_of(j, field);
    if (type == "Sequence") {
      const json& list = array_field(j, field, "decoders");
      for (size_t i = 0; i < list.size(); ++i) decoder(list[i], fmt::format("{}.decoders[{}]", field, i), r);
    } else if (type == "ByteLevel") {
      r.byte_level = true;
    } else if (type == "Replace") {
      const json& p = object_field(j, field, "pattern");
      if (!p.is_object() || !p.contains("String"))
        bad(field + ".pattern", "only {\"String\": ...} patterns are supported");
      r.replaces.emplace_back(string_of(p["String"], field + ".pattern.String"), get_string(j, field, "content"));
    } else if (type == "ByteFallback") {
      r.byte_fallback = true;
    } else if (type == "Fuse") {
    } else if (type == "Strip") {
      if (get_string(j, field, "content") != " ") bad(field + ".content", "only \" \" is supported");
      const int64_t start = get_int(j, field, "start"), stop = get_int(j, field, "stop");
      if (stop != 0) bad(field + ".stop", "only 0 is supported");
      if (start < 0 || start > 64) bad(field + ".start", fmt::format("expected 0..64, found {}", start));
      r.strip_leading += static_cast<int>(start);
    } else if (type == "Metaspace") {
      std::string replacement;
      int prepend = 0;
      metaspace(j, field, replacement, prepend);
      r.replaces.emplace_back(replacement, " ");
      if (prepend != 0) r.strip_leading = std::max(r.strip_leading, 1);
    } else {
      bad(field + ".type", fmt::format("decoder {:?} is not supported", type));
    }
  }

  void post_processor(const json& j, const std::string& field, const Vocab& vocab, std::vector<int32_t>& prefix,
                      std::vector<int32_t>& suffix) const {
    if (j.is_null()) return;
    const std::string type = type_of(j, field);
    auto check_id = [&](int64_t id, const std::string& f) {
      if (id < 0 || id >= vocab.size())
        bad(f, fmt::format("token id {} is outside the vocabulary of {}", id, vocab.size()));
      return static_cast<int32_t>(id);
    };
    if (type == "Sequence") {
      const json& list = array_field(j, field, "processors");
      for (size_t i = 0; i < list.size(); ++i)
        post_processor(list[i], fmt::format("{}.processors[{}]", field, i), vocab, prefix, suffix);
    } else if (type == "ByteLevel") {
    } else if (type == "RobertaProcessing" || type == "BertProcessing") {
      auto pair_id = [&](const char* key) {
        const json& p = object_field(j, field, key);
        if (!p.is_array() || p.size() != 2 || !p[1].is_number_integer()) bad(field + "." + key, "expected [token, id]");
        return check_id(p[1].get<int64_t>(), field + "." + key);
      };
      prefix.push_back(pair_id("cls"));
      suffix.insert(suffix.begin(), pair_id("sep"));
    } else if (type == "TemplateProcessing") {
      const json& single = array_field(j, field, "single");
      const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
      bool after = false;
      for (size_t i = 0; i < single.size(); ++i) {
        const std::string f = fmt::format("{}.single[{}]", field, i);
        const json& item = single[i];
        if (item.is_object() && item.contains("Sequence")) {
          after = true;
        } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
          const std::string name = get_string(item["SpecialToken"], f + ".SpecialToken", "id");
          if (!specials.is_object() || !specials.contains(name) || !specials[name].is_object())
            bad(field + ".special_tokens", fmt::format("no entry for {:?}", name));
          const json& ids = array_field(specials[name], field + ".special_tokens." + name, "ids");
          for (const json& id : ids) {
            if (!id.is_number_integer()) bad(field + ".special_tokens." + name + ".ids", "expected integers");
            (after ? suffix : prefix).push_back(check_id(id.get<int64_t>(), field + ".special_tokens." + name));
          }
        } else {
          bad(f, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
        }
      }
    } else {
      bad(field + ".type", fmt::format("post-processor {:?} is not supported", type));
    }
  }

 private:
  const std::string& source_;
};

}  // namespace

std::unique_ptr<TokenizerSpec> load_hf_json(std::string_view text, const std::string& source, bool fast_tables) {
  // The vocabulary and merges through the fast scanner when they are plain
  // (hf_json_tables.h); anything unusual takes the whole-document parse,
  // whose checks below name the field.
  BpeTables tables;
  std::string rest;
  const bool fast = fast_tables && split_bpe_tables(text, tables, rest);
  json j;
  try {
    j = json::parse(fast ? std::string_view(rest) : text);
  } catch (const json::exception& e) {
    fail(source, "", "not valid JSON: {}", e.what());
  }
  JsonLoader L(source);
  if (!j.is_object()) L.bad("", "expected a JSON object at the top level");
  if (!j.contains("model") || !j["model"].is_object()) L.bad("model", "missing or not an object");
  const json& model = j["model"];
  if (model.contains("type") && !model["type"].is_null()) {
    const std::string type = L.string_of(model["type"], "model.type");
    if (type != "BPE") L.bad("model.type", fmt::format("model {:?} is not supported; only BPE is", type));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object())
    L.bad("model.vocab", "missing or not an object mapping token -> id");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && !L.string_of(model[key], std::string("model.") + key).empty())
      L.bad(std::string("model.") + key, "is not supported");
  }

  auto spec = std::make_unique<TokenizerSpec>();
  spec->source = source;
  Vocab& v = spec->vocab;

  // Ids: model vocab plus added tokens.
  if (!fast) {
    const json& vocab = model["vocab"];
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer())
        L.bad("model.vocab." + it.key(), fmt::format("expected an integer id, found {}", it.value().type_name()));
      tables.vocab.emplace_back(it.key(), it.value().get<int64_t>());
    }
  }
  const json empty = json::array();
  const json& added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : empty;
  if (!added.is_array()) L.bad("added_tokens", "expected an array");
  const size_t n_entries = tables.vocab.size() + added.size();
  int64_t max_id = -1;
  auto check_range = [&](int64_t x, auto field) {
    if (x < 0 || x > static_cast<int64_t>(2 * n_entries + 1024))
      L.bad(field(), fmt::format("id {} is out of range for {} entries", x, n_entries));
    max_id = std::max(max_id, x);
  };
  for (const auto& entry : tables.vocab) check_range(entry.second, [&] { return "model.vocab." + entry.first; });
  for (size_t i = 0; i < added.size(); ++i) {
    if (!added[i].is_object()) L.bad(fmt::format("added_tokens[{}]", i), "expected an object");
    const json& id = L.object_field(added[i], fmt::format("added_tokens[{}]", i), "id");
    const std::string field = fmt::format("added_tokens[{}].id", i);
    if (!id.is_number_integer()) L.bad(field, fmt::format("expected an integer id, found {}", id.type_name()));
    check_range(id.get<int64_t>(), [&] { return field; });
  }
  if (max_id < 0) L.bad("model.vocab", "is empty");
  v.pieces.assign(max_id + 1, {});
  v.attrs.assign(max_id + 1, TokenAttr::Absent);
  v.special.assign(max_id + 1, 0);
  for (auto& [piece, id] : tables.vocab) {
    // Two keys with one id: nlohmann's map decides which one stays; the
    // whole-document reader keeps that rule (rare; never in real files).
    if (fast && v.attrs[size_t(id)] == TokenAttr::Normal) return load_hf_json(text, source, false);
    v.pieces[size_t(id)] = std::move(piece);
    v.attrs[size_t(id)] = TokenAttr::Normal;
  }
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string f = fmt::format("added_tokens[{}]", i);
    AddedToken t;
    t.id = static_cast<int32_t>(added[i]["id"].get<int64_t>());
    t.content = L.get_string(added[i], f, "content");
    if (t.content.empty()) L.bad(f + ".content", "is empty");
    t.special = L.get_bool(added[i], f, "special", false);
    t.lstrip = L.get_bool(added[i], f, "lstrip", false);
    t.rstrip = L.get_bool(added[i], f, "rstrip", false);
    t.single_word = L.get_bool(added[i], f, "single_word", false);
    v.pieces[t.id] = t.content;
    v.attrs[t.id] = t.special ? TokenAttr::Control : TokenAttr::UserDefined;
    v.special[t.id] = t.special;
    spec->added.push_back(std::move(t));
  }
  // A key given twice: JSON's last value wins in the whole-document reader;
  // the scanner kept both (finish() sees a piece at two ids), so leave the
  // rare case to that reader.
  if (v.finish(true) && fast) return load_hf_json(text, source, false);

  // Model.
  BpeOptions opts;
  opts.byte_fallback = L.get_bool(model, "model", "byte_fallback", false);
  opts.fuse_unk = L.get_bool(model, "model", "fuse_unk", false);
  opts.ignore_merges = L.get_bool(model, "model", "ignore_merges", false);
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    const std::string unk = L.string_of(model["unk_token"], "model.unk_token");
    opts.unk_id = v.find(unk);
    if (!opts.unk_id) L.bad("model.unk_token", fmt::format("token {:?} is not in the vocabulary", unk));
  }
  auto bpe = std::make_unique<BpeModel>(spec->vocab, opts);
  if (!fast && model.contains("merges") && !model["merges"].is_null()) {
    const json& merges = model["merges"];
    if (!merges.is_array()) L.bad("model.merges", "expected an array");
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string f = fmt::format("model.merges[{}]", i);
      const json& m = merges[i];
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          L.bad(f, fmt::format("expected \"left right\" with one space, found {:?}", s));
        tables.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        tables.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        L.bad(f, "expected \"left right\" or [\"left\", \"right\"]");
      }
    }
  }
  // Resolve the merges' ids on every core (read-only lookups, memory
  // bound), then insert them in rank order.
  const size_t n_merges = tables.merges.size();
  std::vector<std::array<int32_t, 3>> ids(n_merges);
  parallel_for(int64_t(n_merges), 4096, [&](int64_t lo, int64_t hi) {
    std::string joined;
    for (int64_t i = lo; i < hi; ++i) {
      const auto& [a, b] = tables.merges[size_t(i)];
      joined.assign(a).append(b);
      ids[size_t(i)] = {v.find(a).value_or(-1), v.find(b).value_or(-1), v.find(joined).value_or(-1)};
    }
  });
  bpe->reserve_merges(n_merges);
  for (size_t i = 0; i < n_merges; ++i) {
    const auto& [ia, ib, im] = ids[i];
    if (ia < 0 || ib < 0 || im < 0) {
      const auto& [a, b] = tables.merges[i];
      const std::string f = fmt::format("model.merges[{}]", i);
      if (ia < 0) L.bad(f, fmt::format("token {:?} is not in the vocabulary", a));
      if (ib < 0) L.bad(f, fmt::format("token {:?} is not in the vocabulary", b));
      L.bad(f, fmt::format("merged token {:?} is not in the vocabulary", a + b));
    }
    bpe->add_merge(ia, ib, im, static_cast<int32_t>(i));
  }
  spec->model = std::move(bpe);

  // Pipeline.
  L.normalizer(j.contains("normalizer") ? j["normalizer"] : json(), "normalizer", spec->normalizer);
  L.pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), "pre_tokenizer", spec->pre_tokenizer);
  if (!j.contains("decoder") || j["decoder"].is_null())
    spec->decode.join_with_space = true;
  else
    L.decoder(j["decoder"], "decoder", spec->decode);
  L.post_processor(j.contains("post_processor") ? j["post_processor"] : json(), "post_processor", v, spec->prefix_ids,
                   spec->suffix_ids);
  if (!spec->prefix_ids.empty() && v.special[spec->prefix_ids.front()]) spec->bos = spec->prefix_ids.front();
  if (!spec->suffix_ids.empty() && v.special[spec->suffix_ids.back()]) spec->eos = spec->suffix_ids.back();

  // The encoder re-adds a prefix space after every added token when the
  // prefix comes from Prepend or Metaspace(always): strip it there too.
  bool prefix_everywhere = false;
  for (const NormOp& op : spec->normalizer) prefix_everywhere |= op.kind == NormOp::Prepend;
  for (const PreOp& op : spec->pre_tokenizer) prefix_everywhere |= op.kind == PreOp::Metaspace && op.prepend == 2;
  spec->decode.strip_after_special = prefix_everywhere && spec->decode.strip_leading > 0;
  if (spec->pre_tokenizer.empty()) spec->cache_max_word = 64;
  return spec;
}

}  // namespace kite::tok
