// Normalizers: Prepend, Replace (string or regex), Lowercase, the Unicode
// normalization forms (unicode_normalization.cpp) and SentencePiece's
// remove_extra_whitespaces.
#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

// Simple lowercase mapping for Latin-1, Latin Extended-A, Greek and Cyrillic.
uint32_t to_lower(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 0x20;
  if (cp < 0x80) return cp;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 0x20;
  if ((cp >= 0x100 && cp <= 0x137) || (cp >= 0x14A && cp <= 0x177)) return cp % 2 == 0 ? cp + 1 : cp;
  if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E)) return cp % 2 == 1 ? cp + 1 : cp;
  if (cp == 0x178) return 0xFF;
  if (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2) return cp + 0x20;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 0x20;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 0x50;
  return cp;
}

}  // namespace

std::string normalize(const std::vector<NormOp>& ops, std::string_view text) {
  std::string s(text);
  std::vector<std::pair<size_t, size_t>> matches;
  for (const NormOp& op : ops) {
    switch (op.kind) {
      case NormOp::Identity: break;
      case NormOp::Nfc:
      case NormOp::Nfd:
      case NormOp::Nfkc:
      case NormOp::Nfkd: s = unicode_normalize(op.kind, s); break;
      case NormOp::Prepend:
        if (!s.empty()) s.insert(0, op.a);
        break;
      case NormOp::Replace: replace_all(s, op.a, op.b); break;
      case NormOp::ReplaceRegex: {
        matches.clear();
        op.re->find_all(s, matches);
        if (matches.empty()) break;
        std::string out;
        size_t pos = 0;
        for (const auto& [b, e] : matches) {
          out.append(s, pos, b - pos);
          out += op.b;
          pos = e;
        }
        out.append(s, pos, std::string::npos);
        s = std::move(out);
        break;
      }
      case NormOp::RemoveExtraSpaces: {
        // SentencePiece: drop leading/trailing spaces, collapse inner runs.
        std::string out;
        bool space = false;
        for (const char c : s) {
          if (c == ' ') {
            space = !out.empty();
            continue;
          }
          if (space) out += ' ';
          space = false;
          out += c;
        }
        s = std::move(out);
        break;
      }
      case NormOp::Lowercase: {
        std::string out;
        out.reserve(s.size());
        for (size_t pos = 0; pos < s.size();) {
          const Utf8Step st = utf8_step(s, pos);
          if (st.kind != Utf8Step::Valid) {
            out += s[pos++];
            continue;
          }
          if (st.cp < 0x80 || !unicode_lower(st.cp, out)) append_utf8(out, to_lower(st.cp));
          pos += st.len;
        }
        s = std::move(out);
        break;
      }
    }
  }
  return s;
}

}  // namespace kite::tok
