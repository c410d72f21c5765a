// libFuzzer target: bytes parsed as a tokenizer.json; when they load, a few
// short strings are encoded, decoded and streamed, and the whole-document
// reader (no fast vocabulary/merges scanner) must load the same tokenizer.
// Only kite::Error may escape the parser; anything else (crash, other
// exception, sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<kite::Tokenizer> tok;
  try {
    tok = kite::Tokenizer::from_json_text(text, "fuzz/tokenizer.json");
  } catch (const kite::Error&) {
    return 0;
  }
  std::unique_ptr<kite::tok::PipelineTokenizer> slow;
  try {
    slow = std::make_unique<kite::tok::PipelineTokenizer>(kite::tok::load_hf_json(text, "fuzz/tokenizer.json", false));
  } catch (const kite::Error&) {
    __builtin_trap();  // the fast reader accepted what the whole-document reader refuses
  }
  if (slow->vocab_size() != tok->vocab_size()) __builtin_trap();
  static const char* const kSamples[] = {"Hello world", " a  b\n\tc", "ab12 \xE2\x82\xAC \xF0\x9F\x98\x80",
                                         "<s>x</s><|im_start|>", "\xFF\xFE invalid"};
  try {
    for (const char* s : kSamples) {
      const std::vector<int32_t> ids = tok->encode(s);
      if (slow->encode(s, true) != ids) __builtin_trap();
      for (const bool skip : {true, false}) {
        const std::string decoded = tok->decode(ids, skip);
        kite::IncrementalDetokenizer detok(*tok, skip);
        std::string streamed;
        for (const int32_t id : ids) streamed += detok.push(id);
        streamed += detok.flush();
        if (streamed != decoded) __builtin_trap();
      }
    }
  } catch (const kite::Error&) {
    // e.g. a regex hitting PCRE2's match limit
  }
  return 0;
}
