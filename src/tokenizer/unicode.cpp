// UTF-8 scanning, lossy decoding and the GPT-2 byte-level character map.
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

Utf8Step utf8_step(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  const uint8_t c = p[pos];
  if (c < 0x80) return {Utf8Step::Valid, 1, c};
  // Expected length and the allowed range of the second byte (Unicode table 3-7).
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    cp = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    cp = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return {Utf8Step::Invalid, 1, 0};
  }
  size_t i = 1;
  for (; i < need; ++i) {
    if (pos + i >= n) return {Utf8Step::Truncated, i, 0};
    const uint8_t b = p[pos + i];
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Step::Invalid, i, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Step::Valid, need, cp};
}

size_t utf8_char_len(std::string_view s, size_t pos) {
  const Utf8Step st = utf8_step(s, pos);
  return st.kind == Utf8Step::Valid ? st.len : 1;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0, run = 0;  // [run, pos) is valid and not yet copied
  while (pos < bytes.size()) {
    const Utf8Step st = utf8_step(bytes, pos);
    if (st.kind == Utf8Step::Valid) {
      pos += st.len;
      continue;
    }
    out.append(bytes.substr(run, pos - run));
    out += kReplacementChar;
    pos += st.len;
    run = pos;
  }
  out.append(bytes.substr(run));
  return out;
}

bool utf8_valid(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Step st = utf8_step(s, pos);
    if (st.kind != Utf8Step::Valid) return false;
    pos += st.len;
  }
  return true;
}

const ByteLevelMap& byte_level_map() {
  static const ByteLevelMap map = [] {
    ByteLevelMap m;
    m.cp_to_byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? b : 256 + extra++;
      append_utf8(m.byte_to_str[b], cp);
      m.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return map;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteLevelMap& m = byte_level_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += m.byte_to_str[static_cast<uint8_t>(c)];
  return out;
}

std::optional<std::string> byte_level_decode(std::string_view text) {
  const ByteLevelMap& m = byte_level_map();
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Step st = utf8_step(text, pos);
    if (st.kind != Utf8Step::Valid || st.cp >= m.cp_to_byte.size() || m.cp_to_byte[st.cp] < 0) return std::nullopt;
    out += static_cast<char>(m.cp_to_byte[st.cp]);
    pos += st.len;
  }
  return out;
}

}  // namespace kite::tok
