// Vocabularies embedded in GGUF files (llama.cpp):
//   tokenizer.ggml.model "llama": SentencePiece BPE (tokens, scores, token_type)
//   tokenizer.ggml.model "gpt2":  byte-level BPE (tokens, merges, token_type);
//                                 tokenizer.ggml.pre selects the pre-tokenizer regexes.
#include <cmath>

#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

// Pre-tokenizer regexes (applied in turn, each splitting the previous pieces)
// for tokenizer.ggml.pre; empty when unknown.
std::vector<std::string> pre_regexes(const std::string& pre, bool& ignore_merges) {
  ignore_merges = false;
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2" || pre == "phi-2" || pre == "olmo" || pre == "jina-es" ||
      pre == "jina-de" || pre == "jina-v1-en" || pre == "jina-v2-es" || pre == "jina-v2-de" || pre == "roberta-bpe" ||
      pre == "gigachat" || pre == "mpt" || pre == "gpt-neox")
    return {kRegexGpt2};
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "falcon3" || pre == "pixtral") {
    ignore_merges = pre != "falcon3" && pre != "pixtral";
    return {kRegexLlama3};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "megrez") return {kRegexQwen2};
  if (pre == "starcoder" || pre == "refact" || pre == "command-r" || pre == "smollm" || pre == "codeshell" ||
      pre == "exaone" || pre == "minerva-7b")
    return {R"(\p{N})", kRegexGpt2};
  return {};
}

}  // namespace

std::unique_ptr<TokenizerSpec> load_gguf_vocab(const std::string& path) {
  auto f = GgufFile::open(path);
  const std::string model = f->get_string("tokenizer.ggml.model");
  auto spec = std::make_unique<TokenizerSpec>();
  spec->source = path;
  Vocab& v = spec->vocab;
  v.pieces = f->get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.pieces.size();
  if (n == 0) fail(path, "tokenizer.ggml.tokens", "is empty");
  if (n > INT32_MAX / 2) fail(path, "tokenizer.ggml.tokens", "has {} entries, too many", n);
  v.attrs.assign(n, TokenAttr::Normal);
  if (f->has("tokenizer.ggml.token_type")) {
    const std::vector<int32_t> types = f->get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n)
      fail(path, "tokenizer.ggml.token_type", "has {} entries, expected {} (one per token)", types.size(), n);
    for (size_t i = 0; i < n; ++i) {
      switch (types[i]) {
        case 0:
        case 1: v.attrs[i] = TokenAttr::Normal; break;
        case 2: v.attrs[i] = TokenAttr::Unknown; break;
        case 3: v.attrs[i] = TokenAttr::Control; break;
        case 4: v.attrs[i] = TokenAttr::UserDefined; break;
        case 5: v.attrs[i] = TokenAttr::Unused; break;
        case 6: v.attrs[i] = TokenAttr::Byte; break;
        default: fail(path, "tokenizer.ggml.token_type", "entry {} is {}, expected 0..6", i, types[i]);
      }
    }
  }
  auto token_id = [&](const char* key, std::optional<int32_t> def) -> std::optional<int32_t> {
    const auto id = f->find_int(key);
    if (!id) return def && *def < static_cast<int64_t>(n) ? def : std::nullopt;
    if (*id == -1) return std::nullopt;
    if (*id < 0 || *id >= static_cast<int64_t>(n)) fail(path, key, "id {} is outside the {} tokens", *id, n);
    return static_cast<int32_t>(*id);
  };
  const bool spm = model == "llama";
  if (!spm && model != "gpt2")
    fail(path, "tokenizer.ggml.model", "tokenizer model {:?} is not supported; expected \"llama\" or \"gpt2\"", model);
  spec->bos = token_id("tokenizer.ggml.bos_token_id", spm ? std::optional<int32_t>(1) : std::nullopt);
  spec->eos = token_id("tokenizer.ggml.eos_token_id", spm ? std::optional<int32_t>(2) : std::nullopt);
  const auto unk = token_id("tokenizer.ggml.unknown_token_id", spm ? std::optional<int32_t>(0) : std::nullopt);

  if (spm) {
    v.scores = f->get_float_array("tokenizer.ggml.scores");
    if (v.scores.size() != n)
      fail(path, "tokenizer.ggml.scores", "has {} entries, expected {} (one per token)", v.scores.size(), n);
    for (size_t i = 0; i < n; ++i)
      if (!std::isfinite(v.scores[i])) fail(path, "tokenizer.ggml.scores", "entry {} is not finite", i);
    v.finish(false);
    const bool add_space_prefix = f->find_bool("tokenizer.ggml.add_space_prefix").value_or(true);
    const bool remove_extra = f->find_bool("tokenizer.ggml.remove_extra_whitespaces").value_or(false);
    setup_spm_pipeline(*spec, add_space_prefix, remove_extra, true, true, unk);
  } else {
    v.finish(false);
    for (size_t i = 0; i < n; ++i) {
      const TokenAttr a = v.attrs[i];
      v.special[i] = a == TokenAttr::Control || a == TokenAttr::Unknown;
      if ((a == TokenAttr::Control || a == TokenAttr::UserDefined) && !v.pieces[i].empty())
        spec->added.push_back({v.pieces[i], static_cast<int32_t>(i), v.special[i] != 0, false, false, false});
    }
    const std::string pre = f->find_string("tokenizer.ggml.pre").value_or("default");
    BpeOptions opts;
    const std::vector<std::string> regexes = pre_regexes(pre, opts.ignore_merges);
    if (regexes.empty()) fail(path, "tokenizer.ggml.pre", "pre-tokenizer {:?} is not supported", pre);
    for (const std::string& re : regexes) {
      PreOp op{};
      op.kind = PreOp::Split;
      op.re = std::make_shared<Regex>(re, path, "tokenizer.ggml.pre");
      op.behavior = SplitBehavior::Isolated;
      spec->pre_tokenizer.push_back(std::move(op));
    }
    PreOp bl{};
    bl.kind = PreOp::ByteLevel;
    spec->pre_tokenizer.push_back(std::move(bl));
    opts.unk_id = unk;
    auto bpe = std::make_unique<BpeModel>(spec->vocab, opts);
    const std::vector<std::string> merges = f->get_string_array("tokenizer.ggml.merges");
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string& m = merges[i];
      const size_t sp = m.find(' ', 1);
      const std::string field = fmt::format("tokenizer.ggml.merges[{}]", i);
      if (sp == std::string::npos) fail(path, field, "expected \"left right\", found {:?}", m);
      const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
      auto ia = v.find(a), ib = v.find(b), im = v.find(a + b);
      if (!ia || !ib || !im) fail(path, field, "merge {:?} refers to a token that is not in the vocabulary", m);
      bpe->add_merge(*ia, *ib, *im, static_cast<int32_t>(i));
    }
    spec->model = std::move(bpe);
    spec->decode.byte_level = true;
  }
  const bool add_bos = f->find_bool("tokenizer.ggml.add_bos_token").value_or(spm);
  const bool add_eos = f->find_bool("tokenizer.ggml.add_eos_token").value_or(false);
  if (add_bos) {
    if (!spec->bos) fail(path, "tokenizer.ggml.add_bos_token", "is true but there is no bos_token_id");
    spec->prefix_ids = {*spec->bos};
  }
  if (add_eos) {
    if (!spec->eos) fail(path, "tokenizer.ggml.add_eos_token", "is true but there is no eos_token_id");
    spec->suffix_ids = {*spec->eos};
  }
  return spec;
}

}  // namespace kite::tok
