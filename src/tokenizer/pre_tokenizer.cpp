// PCRE2 regexes and the pre-tokenizers (Split, ByteLevel, Metaspace,
// WhitespaceSplit) with HF `tokenizers` split semantics.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

const char* const kRegexGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kRegexLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kRegexQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  const int n = pcre2_get_error_message(code, buf, sizeof(buf));
  return n < 0 ? fmt::format("PCRE2 error {}", code) : std::string(reinterpret_cast<const char*>(buf));
}

// Per-thread JIT stack and match context (the compiled code is shared).
struct MatchResources {
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchResources() {
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~MatchResources() {
    if (stack) pcre2_jit_stack_free(stack);
    if (ctx) pcre2_match_context_free(ctx);
  }
};

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& source, const std::string& field) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (!code) {
    fail(source, field, "invalid regex {:?} at offset {}: {}", pattern, static_cast<size_t>(err_off),
         pcre2_message(err));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  thread_local MatchResources res;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  KITE_CHECK(md != nullptr, "pcre2_match_data_create failed");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t start = 0;
  while (start < s.size()) {
    const int rc = pcre2_match(code, subject, s.size(), start, 0, md, res.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      throw Error("tokenizer regex", "match", pcre2_message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e <= b) {  // empty match: no piece, move on by one character
      start = b + utf8_char_len(s, b);
      continue;
    }
    out.emplace_back(b, e);
    start = e;
  }
  pcre2_match_data_free(md);
}

void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                      bool invert, std::vector<std::string>& out) {
  // Parts covering s: (begin, end, is_match).
  struct Part {
    size_t b, e;
    bool m;
  };
  std::vector<Part> parts;
  size_t pos = 0;
  for (const auto& [b, e] : matches) {
    if (b > pos) parts.push_back({pos, b, invert});
    parts.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < s.size()) parts.push_back({pos, s.size(), invert});

  std::vector<std::pair<size_t, size_t>> kept;
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::Removed:
      for (const Part& p : parts)
        if (!p.m) kept.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Isolated:
      for (const Part& p : parts) kept.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Part& p : parts) {
        if (p.m && !prev_match && !kept.empty())
          kept.back().second = p.e;
        else
          kept.emplace_back(p.b, p.e);
        prev_match = p.m;
      }
      break;
    case SplitBehavior::MergedWithNext: {
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->m && !prev_match && !kept.empty())
          kept.back().first = it->b;
        else
          kept.emplace_back(it->b, it->e);
        prev_match = it->m;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case SplitBehavior::Contiguous:
      for (const Part& p : parts) {
        if (p.m && prev_match && !kept.empty())
          kept.back().second = p.e;
        else
          kept.emplace_back(p.b, p.e);
        prev_match = p.m;
      }
      break;
  }
  for (const auto& [b, e] : kept)
    if (e > b) out.emplace_back(s.substr(b, e - b));
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

void pre_tokenize(const std::vector<PreOp>& ops, std::string_view text, bool first, std::vector<std::string>& words) {
  words.clear();
  words.emplace_back(text);
  std::vector<std::string> next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const PreOp& op : ops) {
    next.clear();
    for (size_t i = 0; i < words.size(); ++i) {
      std::string& w = words[i];
      switch (op.kind) {
        case PreOp::Split:
          matches.clear();
          op.re->find_all(w, matches);
          split_by_matches(w, matches, op.behavior, op.invert, next);
          break;
        case PreOp::WhitespaceSplit: {
          size_t pos = 0;
          while (pos < w.size()) {
            while (pos < w.size() && (w[pos] == ' ' || w[pos] == '\t' || w[pos] == '\n' || w[pos] == '\r')) ++pos;
            size_t end = pos;
            while (end < w.size() && !(w[end] == ' ' || w[end] == '\t' || w[end] == '\n' || w[end] == '\r')) ++end;
            if (end > pos) next.emplace_back(w.substr(pos, end - pos));
            pos = end;
          }
          break;
        }
        case PreOp::ByteLevel: {
          if (op.add_prefix_space && (w.empty() || w[0] != ' ')) w.insert(w.begin(), ' ');
          if (op.re) {
            std::vector<std::string> parts;
            matches.clear();
            op.re->find_all(w, matches);
            split_by_matches(w, matches, SplitBehavior::Isolated, false, parts);
            for (const std::string& p : parts) next.push_back(byte_level_encode(p));
          } else if (!w.empty()) {
            next.push_back(byte_level_encode(w));
          }
          break;
        }
        case PreOp::Metaspace: {
          replace_all(w, " ", op.replacement);
          const bool prepend = op.prepend == 2 || (op.prepend == 1 && first && i == 0);
          if (prepend && !w.starts_with(op.replacement)) w.insert(0, op.replacement);
          if (!op.split) {
            if (!w.empty()) next.push_back(w);
            break;
          }
          matches.clear();
          for (size_t pos = w.find(op.replacement); pos != std::string::npos && !op.replacement.empty();
               pos = w.find(op.replacement, pos + op.replacement.size()))
            matches.emplace_back(pos, pos + op.replacement.size());
          split_by_matches(w, matches, SplitBehavior::MergedWithNext, false, next);
          break;
        }
      }
    }
    words.swap(next);
  }
}

}  // namespace kite::tok
