// SentencePiece BPE: the adjacent pair whose concatenation is the vocab piece
// with the highest score is merged first, leftmost on ties. Symbols that end
// up outside the vocabulary become <0xXX> byte pieces (byte fallback) or unk.
#include <queue>

#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

struct Candidate {
  float score;
  int32_t left;
  uint32_t size;  // bytes of the merged piece, to detect stale entries
  bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
};

bool mergeable(TokenAttr a) { return a == TokenAttr::Normal || a == TokenAttr::UserDefined || a == TokenAttr::Unused; }

}  // namespace

void SpmBpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  struct Sym {
    uint32_t start, len;
    int32_t prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = utf8_char_len(word, pos);
    const int32_t n = static_cast<int32_t>(syms.size());
    syms.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), n - 1, -1});
    if (n > 0) syms[n - 1].next = n;
    pos += len;
  }
  auto lookup = [&](size_t start, size_t len) -> std::optional<int32_t> {
    auto id = vocab_.find(word.substr(start, len));
    if (id && mergeable(vocab_.attrs[*id])) return id;
    return std::nullopt;
  };
  std::priority_queue<Candidate> heap;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[left].next;
    if (right < 0) return;
    const uint32_t size = syms[left].len + syms[right].len;
    if (auto id = lookup(syms[left].start, size)) heap.push({vocab_.scores[*id], left, size});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Sym& left = syms[c.left];
    if (left.len == 0 || left.next < 0 || left.len + syms[left.next].len != c.size) continue;  // stale
    Sym& right = syms[left.next];
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) {
    const std::string_view piece = word.substr(syms[i].start, syms[i].len);
    if (auto id = lookup(syms[i].start, syms[i].len)) {
      out.push_back(*id);
      continue;
    }
    bool done = false;
    if (byte_fallback_) {
      bool all = true;
      for (const char ch : piece) all = all && vocab_.byte_ids[static_cast<uint8_t>(ch)] >= 0;
      if (all) {
        for (const char ch : piece) out.push_back(vocab_.byte_ids[static_cast<uint8_t>(ch)]);
        done = true;
      }
    }
    if (!done && unk_id_) out.push_back(*unk_id_);
  }
}

}  // namespace kite::tok
