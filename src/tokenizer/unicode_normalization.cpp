// Unicode normalization (NFC, NFD, NFKC, NFKD) and full per-character
// lowercase mapping through ICU, the Unicode Character Database's
// maintained implementation. Without ICU (a build where CMake found none)
// tokenizers that need these are refused at load (hf_tokenizer_json.cpp).
#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

#ifdef KITE_HAVE_ICU
#include <unicode/bytestream.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace kite::tok {

bool have_unicode_normalization() {
#ifdef KITE_HAVE_ICU
  return true;
#else
  return false;
#endif
}

std::string unicode_normalize(NormOp::Kind form, std::string_view text) {
#ifdef KITE_HAVE_ICU
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormOp::Nfc: n = icu::Normalizer2::getNFCInstance(status); break;
    case NormOp::Nfd: n = icu::Normalizer2::getNFDInstance(status); break;
    case NormOp::Nfkc: n = icu::Normalizer2::getNFKCInstance(status); break;
    case NormOp::Nfkd: n = icu::Normalizer2::getNFKDInstance(status); break;
    default: KITE_CHECK(false, "unicode_normalize: {} is not a normalization form", int(form));
  }
  KITE_CHECK(U_SUCCESS(status), "ICU normalizer unavailable: {}", u_errorName(status));
  const icu::StringPiece in(text.data(), int32_t(text.size()));
  if (n->isNormalizedUTF8(in, status) && U_SUCCESS(status)) return std::string(text);  // the common case
  status = U_ZERO_ERROR;
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  icu::StringByteSink<std::string> sink(&out);
  n->normalizeUTF8(0, in, sink, nullptr, status);
  KITE_CHECK(U_SUCCESS(status), "ICU normalization failed: {}", u_errorName(status));
  return out;
#else
  (void)form;
  (void)text;
  KITE_CHECK(false, "unicode_normalize without ICU (the tokenizer should have been refused at load)");
  return {};
#endif
}

// Full lowercase mapping of one code point, as Rust's char::to_lowercase
// (what Hugging Face's Lowercase normalizer applies per character): may
// give several code points (U+0130 -> "i" + U+0307). False without ICU.
bool unicode_lower(uint32_t cp, std::string& out) {
#ifdef KITE_HAVE_ICU
  icu::UnicodeString s{UChar32(cp)};
  s.toLower(icu::Locale::getRoot());
  s.toUTF8String(out);
  return true;
#else
  (void)cp;
  (void)out;
  return false;
#endif
}

}  // namespace kite::tok
