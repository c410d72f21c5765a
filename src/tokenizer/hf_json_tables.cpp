#include "tokenizer/hf_json_tables.h"

#include <cctype>
#include <cstring>

#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

struct Scanner {
  std::string_view s;
  size_t p = 0;

  void ws() {
    while (p < s.size() && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t')) ++p;
  }
  bool eat(char c) {
    ws();
    if (p < s.size() && s[p] == c) {
      ++p;
      return true;
    }
    return false;
  }
  bool peek(char c) {
    ws();
    return p < s.size() && s[p] == c;
  }
  // Skips a string starting at '"'; `raw` gets its bytes between the quotes.
  bool skip_string(std::string_view* raw = nullptr) {
    if (p >= s.size() || s[p] != '"') return false;
    const size_t b = ++p;
    while (p < s.size()) {
      const char* q = static_cast<const char*>(std::memchr(s.data() + p, '"', s.size() - p));
      if (!q) return false;
      size_t e = size_t(q - s.data());
      size_t backslashes = 0;
      while (e - backslashes > b && s[e - 1 - backslashes] == '\\') ++backslashes;
      p = e + 1;
      if (backslashes % 2 == 0) {
        if (raw) *raw = s.substr(b, e - b);
        return true;
      }
    }
    return false;
  }
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // Reads a string into `out` (escapes decoded).
  bool string(std::string& out) {
    std::string_view raw;
    ws();
    if (!skip_string(&raw)) return false;
    out.clear();
    if (raw.find('\\') == std::string_view::npos) {
      out.assign(raw);
      return true;
    }
    for (size_t i = 0; i < raw.size(); ++i) {
      const char c = raw[i];
      if (c != '\\') {
        if (static_cast<unsigned char>(c) < 0x20) return false;
        out += c;
        continue;
      }
      if (++i >= raw.size()) return false;
      switch (raw[i]) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          auto u16 = [&](size_t at, uint32_t& v) {
            if (at + 4 > raw.size()) return false;
            v = 0;
            for (size_t k = 0; k < 4; ++k) {
              const int h = hex(raw[at + k]);
              if (h < 0) return false;
              v = v * 16 + uint32_t(h);
            }
            return true;
          };
          uint32_t cp = 0;
          if (!u16(i + 1, cp)) return false;
          i += 4;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair
            uint32_t lo = 0;
            if (i + 2 >= raw.size() || raw[i + 1] != '\\' || raw[i + 2] != 'u' || !u16(i + 3, lo) || lo < 0xDC00 ||
                lo > 0xDFFF)
              return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          append_utf8(out, cp);
          break;
        }
        default: return false;
      }
    }
    return true;
  }
  bool integer(int64_t& v) {
    ws();
    const size_t b = p;
    if (p < s.size() && s[p] == '-') ++p;
    int64_t x = 0;
    size_t digits = 0;
    while (p < s.size() && s[p] >= '0' && s[p] <= '9') {
      if (++digits > 15) return false;
      x = x * 10 + (s[p++] - '0');
    }
    if (digits == 0) return false;
    if (p < s.size() && (s[p] == '.' || s[p] == 'e' || s[p] == 'E')) return false;
    v = s[b] == '-' ? -x : x;
    return true;
  }
  // Skips any JSON value.
  bool value(int depth = 0) {
    if (depth > 256) return false;
    ws();
    if (p >= s.size()) return false;
    const char c = s[p];
    if (c == '"') return skip_string();
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++p;
      if (eat(close)) return true;
      for (;;) {
        if (c == '{') {
          ws();
          if (!skip_string() || !eat(':')) return false;
        }
        if (!value(depth + 1)) return false;
        if (eat(close)) return true;
        if (!eat(',')) return false;
      }
    }
    const size_t b = p;
    while (p < s.size() &&
           (std::isalnum(static_cast<unsigned char>(s[p])) || s[p] == '-' || s[p] == '+' || s[p] == '.'))
      ++p;
    return p > b;
  }
};

bool parse_vocab(std::string_view span, BpeTables& t) {
  Scanner sc{span};
  if (!sc.eat('{')) return false;
  if (sc.eat('}')) return true;
  std::string key;
  for (;;) {
    int64_t id = 0;
    if (!sc.string(key) || !sc.eat(':') || !sc.integer(id)) return false;
    t.vocab.emplace_back(key, id);
    if (sc.eat('}')) break;
    if (!sc.eat(',')) return false;
  }
  sc.ws();
  return sc.p == span.size();
}

bool parse_merges(std::string_view span, BpeTables& t) {
  Scanner sc{span};
  if (!sc.eat('[')) return false;
  if (sc.eat(']')) return true;
  std::string a, b;
  for (;;) {
    if (sc.peek('[')) {
      ++sc.p;
      if (!sc.string(a) || !sc.eat(',') || !sc.string(b) || !sc.eat(']')) return false;
    } else {
      std::string m;
      if (!sc.string(m)) return false;
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) return false;
      a = m.substr(0, sp);
      b = m.substr(sp + 1);
    }
    t.merges.emplace_back(std::move(a), std::move(b));
    if (sc.eat(']')) break;
    if (!sc.eat(',')) return false;
  }
  sc.ws();
  return sc.p == span.size();
}

}  // namespace

bool split_bpe_tables(std::string_view text, BpeTables& tables, std::string& rest) {
  Scanner sc{text};
  if (!sc.eat('{')) return false;
  size_t vocab_b = 0, vocab_e = 0, merges_b = 0, merges_e = 0;
  bool seen_model = false;
  if (!sc.eat('}')) {
    for (;;) {
      std::string_view key;
      sc.ws();
      if (!sc.skip_string(&key) || !sc.eat(':')) return false;
      if (key == "model") {
        if (seen_model || !sc.peek('{')) return false;  // (duplicates and odd shapes: the slow path)
        seen_model = true;
        ++sc.p;
        if (!sc.eat('}')) {
          for (;;) {
            std::string_view mk;
            sc.ws();
            if (!sc.skip_string(&mk) || !sc.eat(':')) return false;
            sc.ws();
            const size_t b = sc.p;
            if (!sc.value()) return false;
            if (mk == "vocab") {
              if (vocab_e) return false;
              vocab_b = b;
              vocab_e = sc.p;
            } else if (mk == "merges") {
              if (merges_e) return false;
              merges_b = b;
              merges_e = sc.p;
            }
            if (sc.eat('}')) break;
            if (!sc.eat(',')) return false;
          }
        }
      } else if (!sc.value()) {
        return false;
      }
      if (sc.eat('}')) break;
      if (!sc.eat(',')) return false;
    }
  }
  sc.ws();
  if (sc.p != text.size() || !vocab_e) return false;
  if (!parse_vocab(text.substr(vocab_b, vocab_e - vocab_b), tables)) return false;
  if (merges_e && text[merges_b] != 'n' && !parse_merges(text.substr(merges_b, merges_e - merges_b), tables))
    return false;
  // The document without the two tables.
  rest.clear();
  rest.reserve(text.size() - (vocab_e - vocab_b) - (merges_e - merges_b) + 4);
  if (merges_e && merges_b < vocab_b) {
    rest.append(text.substr(0, merges_b)).append(text[merges_b] == 'n' ? "null" : "[]");
    rest.append(text.substr(merges_e, vocab_b - merges_e)).append("{}").append(text.substr(vocab_e));
  } else {
    rest.append(text.substr(0, vocab_b)).append("{}");
    if (merges_e) {
      rest.append(text.substr(vocab_e, merges_b - vocab_e)).append(text[merges_b] == 'n' ? "null" : "[]");
      rest.append(text.substr(merges_e));
    } else {
      rest.append(text.substr(vocab_e));
    }
  }
  return true;
}

}  // namespace kite::tok
