#pragma once
// A fast path for the two large members of a tokenizer.json, model.vocab
// and model.merges (hundreds of thousands of entries): they are read by a
// small dedicated scanner instead of being built into a JSON DOM, and the
// rest of the document (a few KB) goes to nlohmann::json as usual.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kite::tok {

struct BpeTables {
  std::vector<std::pair<std::string, int64_t>> vocab;       // in file order
  std::vector<std::pair<std::string, std::string>> merges;  // "a b" or ["a", "b"]
};

// Splits `text`: fills `tables` from model.vocab and model.merges and sets
// `rest` to the document with those two values replaced by {} and []. False
// when the document is not shaped as expected or an entry is not a plain
// string -> integer / merge (then the caller parses the whole document with
// nlohmann::json, whose errors name the field).
bool split_bpe_tables(std::string_view text, BpeTables& tables, std::string& rest);

}  // namespace kite::tok
