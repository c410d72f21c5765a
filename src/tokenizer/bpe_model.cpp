// Rank-ordered BPE (HF `tokenizers` BPE model, llama.cpp BPE): the pair with
// the lowest merge rank is merged first, leftmost on ties. A linked list of
// symbols plus a min-heap keeps each word O(n log n).
#include <queue>

#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Candidate {
  int32_t rank;
  int32_t pos;  // index of the left symbol
  int32_t left, right, merged;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void BpeModel::add_merge(int32_t a, int32_t b, int32_t merged, int32_t rank) {
  merges_[pair_key(a, b)] = {rank, merged};
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opts_.ignore_merges) {
    if (auto id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  bool last_unk = false;
  auto push = [&](int32_t id) {
    const int32_t n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, -1});
    if (n > 0) syms[n - 1].next = n;
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = utf8_char_len(word, pos);
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    if (auto id = vocab_.find(ch)) {
      push(*id);
      last_unk = false;
      continue;
    }
    if (opts_.byte_fallback) {
      bool all = true;
      for (const char c : ch) all = all && vocab_.byte_ids[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (const char c : ch) push(vocab_.byte_ids[static_cast<uint8_t>(c)]);
        last_unk = false;
        continue;
      }
    }
    if (opts_.unk_id) {
      if (!(opts_.fuse_unk && last_unk)) push(*opts_.unk_id);
      last_unk = true;
    }
    // Without an unk token the character is dropped, as HF does.
  }

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = syms[pos].next;
    if (next < 0) return;
    auto it = merges_.find(pair_key(syms[pos].id, syms[next].id));
    if (it == merges_.end()) return;
    heap.push({it->second.first, pos, syms[pos].id, syms[next].id, it->second.second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Sym& left = syms[c.pos];
    if (left.id != c.left || left.next < 0 || syms[left.next].id != c.right) continue;  // stale
    const int32_t right = left.next;
    left.id = c.merged;
    left.next = syms[right].next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    syms[right].id = -1;
    consider(left.prev);
    consider(c.pos);
  }
  if (syms.empty()) return;
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace kite::tok
