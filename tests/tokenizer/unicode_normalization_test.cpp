// Unicode normalization for tokenizer.json normalizers: ICU's NFC/NFD/
// NFKC/NFKD against the Unicode Character Database's own conformance file
// (NormalizationTest.txt, Debian's unicode-data), and tokenizers that
// normalize giving the same ids for composed and decomposed text.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite {
namespace {

using tok::NormOp;

std::string utf8_of_hex(const std::string& field) {  // "1E0A 0323" -> UTF-8
  std::istringstream in(field);
  std::string hex, out;
  while (in >> hex) tok::append_utf8(out, uint32_t(std::stoul(hex, nullptr, 16)));
  return out;
}

TEST(UnicodeNormalization, ConformsToTheUcdNormalizationTest) {
  if (!tok::have_unicode_normalization()) GTEST_SKIP() << "built without ICU";
  const std::string path = "/usr/share/unicode/NormalizationTest.txt.bz2";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " missing: apt install unicode-data (scripts/setup.sh)";
  FILE* f = popen(("bzcat " + path).c_str(), "r");
  ASSERT_NE(f, nullptr);
  char buf[4096];
  int lines = 0, failures = 0;
  while (std::fgets(buf, sizeof buf, f)) {
    std::string line(buf);
    if (line.empty() || line[0] == '#' || line[0] == '@') continue;
    std::vector<std::string> c;
    std::istringstream in(line);
    std::string field;
    for (int i = 0; i < 5 && std::getline(in, field, ';'); ++i) c.push_back(utf8_of_hex(field));
    if (c.size() != 5) continue;
    ++lines;
    auto expect = [&](NormOp::Kind form, int from, int to, const char* name) {
      if (tok::unicode_normalize(form, c[size_t(from)]) != c[size_t(to)] && ++failures <= 10)
        ADD_FAILURE() << name << "(c" << from + 1 << ") != c" << to + 1 << " on: " << line;
    };
    for (int i : {0, 1, 2}) expect(NormOp::Nfc, i, 1, "NFC");
    for (int i : {3, 4}) expect(NormOp::Nfc, i, 3, "NFC");
    for (int i : {0, 1, 2}) expect(NormOp::Nfd, i, 2, "NFD");
    for (int i : {3, 4}) expect(NormOp::Nfd, i, 4, "NFD");
    for (int i : {0, 1, 2, 3, 4}) expect(NormOp::Nfkc, i, 3, "NFKC");
    for (int i : {0, 1, 2, 3, 4}) expect(NormOp::Nfkd, i, 4, "NFKD");
  }
  pclose(f);
  EXPECT_GT(lines, 15000) << "the conformance file looks truncated";
  EXPECT_EQ(failures, 0);
}

const std::string kNfcTokenizer = R"({
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"c": 0, "a": 1, "f": 2, "\u00c3": 3, "\u00a9": 4, "\u00c3\u00a9": 5, "e": 6,
            "\u00cc": 7, "\u0123": 8, "caf": 9, "ca": 10},
            "merges": ["\u00c3 \u00a9", "c a", "ca f"]}})";

// Qwen2/Qwen3 normalize with NFC: a decomposed accent (e + U+0301, as macOS
// file names give) must tokenize as the composed one the model was trained on.
TEST(UnicodeNormalization, NfcTokenizerGivesComposedIdsForDecomposedText) {
  if (!tok::have_unicode_normalization()) {
    EXPECT_THROW(Tokenizer::from_json_text(kNfcTokenizer, "nfc.json"), Error);
    GTEST_SKIP() << "built without ICU: NFC tokenizers are refused (checked)";
  }
  auto t = Tokenizer::from_json_text(kNfcTokenizer, "nfc.json");
  const std::vector<int32_t> composed = t->encode("caf\u00e9", false);
  EXPECT_EQ(composed, (std::vector<int32_t>{9, 5}));
  EXPECT_EQ(t->encode("cafe\u0301", false), composed);
  EXPECT_EQ(t->decode(composed), "caf\u00e9");
}

TEST(UnicodeNormalization, FormsAndLowercaseOnKnownCases) {
  if (!tok::have_unicode_normalization()) GTEST_SKIP() << "built without ICU";
  EXPECT_EQ(tok::unicode_normalize(NormOp::Nfc, "e\u0301"), "\u00e9");
  EXPECT_EQ(tok::unicode_normalize(NormOp::Nfd, "\u00e9"), "e\u0301");
  EXPECT_EQ(tok::unicode_normalize(NormOp::Nfkc, "\ufb01 \u2460 \uff21"), "fi 1 A");  // ligature, circled, fullwidth
  EXPECT_EQ(tok::unicode_normalize(NormOp::Nfkd, "\u1e9b\u0323"), "s\u0323\u0307");
  EXPECT_EQ(tok::unicode_normalize(NormOp::Nfc, "plain ascii"), "plain ascii");
  // HF's Lowercase maps each character fully (Rust char::to_lowercase).
  std::vector<tok::NormOp> lower = {{NormOp::Lowercase, {}, {}, nullptr}};
  EXPECT_EQ(tok::normalize(lower, "\u0130STANBUL \u03a3\u039f\u03a6\u039f\u03a3 \u0412\u041e\u0414\u0410 \u1e9e"),
            "i\u0307stanbul \u03c3\u03bf\u03c6\u03bf\u03c3 \u0432\u043e\u0434\u0430 \u00df");
}

}  // namespace
}  // namespace kite
