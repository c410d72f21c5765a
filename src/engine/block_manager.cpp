#include "engine/block_manager.h"

#include <algorithm>
#include <bit>
#include <climits>
#include <stdexcept>
#include <string>

#include "core/error.h"

namespace kite {

namespace {

// Odd 64-bit multipliers (the golden ratio and two primes of the xxHash
// family) and a splitmix-style finalizer: every step (xor-shift, odd
// multiply) is a bijection, so distinct roots stay distinct.
constexpr uint64_t kMulA = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kMulB = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kRootSeed = 0x4B6974652D4B5631ULL;  // "Kite-KV1"

uint64_t finalize(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// The parent hash of a chain's first block: the extra key (LoRA id, image
// hash, ...) enters the chain here.
uint64_t root_hash(uint64_t extra_key) { return finalize(extra_key ^ kRootSeed); }

// Hash of one block given its parent's hash: two token ids per 64-bit round.
uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t acc = parent + kMulA;
  const size_t n = tokens.size();
  size_t i = 0;
  for (; i + 2 <= n; i += 2) {
    const uint64_t w = uint64_t(uint32_t(tokens[i])) | (uint64_t(uint32_t(tokens[i + 1])) << 32);
    acc = std::rotl(acc + w * kMulB, 31) * kMulA;
  }
  if (i < n) acc = std::rotl(acc + uint64_t(uint32_t(tokens[i])) * kMulB, 31) * kMulA;
  return finalize(acc ^ uint64_t(n));
}

[[noreturn]] void broken(const std::string& what) { throw std::logic_error("BlockManager invariant broken: " + what); }

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks < 1 || num_blocks > INT32_MAX)
    fail("BlockManager", "num_blocks", "expected 1..{} KV-cache blocks, got {}", INT32_MAX, num_blocks);
  if (block_size < 1 || block_size > INT32_MAX)
    fail("BlockManager", "block_size", "expected 1..{} tokens per block, got {}", INT32_MAX, block_size);
  const size_t n = size_t(num_blocks);
  ref_.assign(n, 0);
  prev_.resize(n);
  next_.resize(n);
  for (size_t b = 0; b < n; ++b) {
    prev_[b] = BlockId(b) - 1;
    next_[b] = b + 1 < n ? BlockId(b + 1) : kNone;
  }
  head_ = 0;
  tail_ = BlockId(n - 1);
  num_free_ = num_blocks;
  cached_.assign(n, 0);
  if (prefix_caching_) {
    hash_.assign(n, 0);
    parent_hash_.assign(n, 0);
    tokens_.assign(n * size_t(block_size), 0);
    cache_.reserve(n);
  }
}

// ---- free pool ----------------------------------------------------------------

void BlockManager::unlink_free(BlockId b) {
  const BlockId p = prev_[size_t(b)], nx = next_[size_t(b)];
  (p == kNone ? head_ : next_[size_t(p)]) = nx;
  (nx == kNone ? tail_ : prev_[size_t(nx)]) = p;
  prev_[size_t(b)] = next_[size_t(b)] = kNone;
  --num_free_;
}

void BlockManager::push_free(BlockId b) {
  prev_[size_t(b)] = tail_;
  next_[size_t(b)] = kNone;
  (tail_ == kNone ? head_ : next_[size_t(tail_)]) = b;
  tail_ = b;
  ++num_free_;
}

BlockId BlockManager::pop_free() {
  const BlockId b = head_;
  KITE_CHECK(b != kNone && ref_[size_t(b)] == 0, "pop_free: empty pool or head block {} in use", b);
  unlink_free(b);
  if (cached_[size_t(b)]) {  // evict: its contents are about to be overwritten
    const auto it = cache_.find(hash_[size_t(b)]);
    KITE_CHECK(it != cache_.end() && it->second == b, "cached block {} missing from the cache map", b);
    cache_.erase(it);
    cached_[size_t(b)] = 0;
  }
  return b;
}

// ---- prefix cache ---------------------------------------------------------------

int64_t BlockManager::match_prefix(std::span<const int32_t> tokens, uint64_t extra_key, BlockTable* out) const {
  if (!prefix_caching_ || tokens.empty()) return 0;
  const int64_t max_blocks = (int64_t(tokens.size()) - 1) / block_size_;  // leave a token to compute
  const size_t bs = size_t(block_size_);
  uint64_t parent = root_hash(extra_key);
  int64_t n = 0;
  for (; n < max_blocks; ++n) {
    const auto blk = tokens.subspan(size_t(n) * bs, bs);
    const uint64_t h = chain_hash(parent, blk);
    const auto it = cache_.find(h);
    if (it == cache_.end()) break;
    const size_t b = size_t(it->second);
    // A colliding hash must not serve another chain's K/V.
    if (parent_hash_[b] != parent || !std::equal(blk.begin(), blk.end(), tokens_.begin() + ptrdiff_t(b * bs))) break;
    if (out) {
      out->blocks.push_back(BlockId(b));
      out->hashes.push_back(h);
    }
    parent = h;
  }
  return n;
}

int64_t BlockManager::cached_prefix_tokens(std::span<const int32_t> tokens, uint64_t extra_key) const {
  return match_prefix(tokens, extra_key, nullptr) * block_size_;
}

int64_t BlockManager::acquire_prefix(BlockTable& table, std::span<const int32_t> tokens, uint64_t extra_key) {
  KITE_CHECK(table.blocks.empty() && table.hashes.empty(), "acquire_prefix needs an empty table ({} blocks)",
             table.blocks.size());
  if (!prefix_caching_) return 0;
  const int64_t n = match_prefix(tokens, extra_key, &table);
  for (BlockId b : table.blocks) {
    if (ref_[size_t(b)] == 0) unlink_free(b);  // revive a cached free block
    ++ref_[size_t(b)];
  }
  const int64_t covered = n * block_size_;
  table.num_cached_tokens = covered;
  stats_.queried_tokens += int64_t(tokens.size());
  stats_.hit_tokens += covered;
  return covered;
}

void BlockManager::cache_full_blocks(BlockTable& table, std::span<const int32_t> tokens, int64_t num_computed,
                                     uint64_t extra_key) {
  if (!prefix_caching_) return;
  KITE_CHECK(num_computed >= 0 && num_computed <= int64_t(tokens.size()) &&
                 num_computed <= int64_t(table.blocks.size()) * block_size_,
             "cache_full_blocks: {} computed tokens, {} token ids, {} blocks", num_computed, tokens.size(),
             table.blocks.size());
  KITE_CHECK(table.hashes.size() <= table.blocks.size(), "table has {} hashes for {} blocks", table.hashes.size(),
             table.blocks.size());
  const size_t bs = size_t(block_size_);
  const size_t full = size_t(num_computed / block_size_);
  for (size_t i = table.hashes.size(); i < full; ++i) {
    const uint64_t parent = i ? table.hashes[i - 1] : root_hash(extra_key);
    const auto blk = tokens.subspan(i * bs, bs);
    const uint64_t h = chain_hash(parent, blk);
    table.hashes.push_back(h);
    const size_t b = size_t(table.blocks[i]);
    if (cached_[b]) {  // shared with the table that registered it (fork)
      KITE_CHECK(hash_[b] == h, "block {} is cached with other contents than the tokens given for it", b);
      continue;
    }
    if (!cache_.try_emplace(h, BlockId(b)).second) continue;  // another block holds this prefix
    cached_[b] = 1;
    hash_[b] = h;
    parent_hash_[b] = parent;
    std::copy(blk.begin(), blk.end(), tokens_.begin() + ptrdiff_t(b * bs));
  }
}

// ---- allocation ---------------------------------------------------------------

int64_t BlockManager::count_cow(const BlockTable& table, int64_t first_write_slot, int64_t num_slots) const {
  KITE_CHECK(0 <= first_write_slot && first_write_slot <= num_slots, "bad write range [{}, {})", first_write_slot,
             num_slots);
  if (first_write_slot == num_slots) return 0;
  KITE_CHECK(first_write_slot >= int64_t(table.hashes.size()) * block_size_,
             "write at slot {} into a hashed block (table has {} hashed blocks of {})", first_write_slot,
             table.hashes.size(), block_size_);
  const int64_t end = std::min(int64_t(table.blocks.size()), blocks_for(num_slots));
  int64_t cow = 0;
  for (int64_t i = first_write_slot / block_size_; i < end; ++i) {
    const size_t b = size_t(table.blocks[size_t(i)]);
    if (ref_[b] > 1) {
      ++cow;
    } else {
      KITE_CHECK(ref_[b] == 1 && !cached_[b], "write into block {} (ref {}, cached {}) would corrupt it", b, ref_[b],
                 int(cached_[b]));
    }
  }
  return cow;
}

int64_t BlockManager::blocks_needed(const BlockTable& table, int64_t first_write_slot, int64_t num_slots) const {
  const int64_t grow = std::max<int64_t>(0, blocks_for(num_slots) - int64_t(table.blocks.size()));
  return grow + count_cow(table, first_write_slot, num_slots);
}

bool BlockManager::allocate_slots(BlockTable& table, int64_t first_write_slot, int64_t num_slots,
                                  std::vector<BlockCopy>& copies) {
  const int64_t want = blocks_for(num_slots);
  const int64_t have = int64_t(table.blocks.size());
  const int64_t cow = count_cow(table, first_write_slot, num_slots);
  if (std::max<int64_t>(0, want - have) + cow > num_free_) return false;
  if (cow) {
    const int64_t end = std::min(have, want);
    for (int64_t i = first_write_slot / block_size_; i < end; ++i) {
      BlockId& slot = table.blocks[size_t(i)];
      if (ref_[size_t(slot)] <= 1) continue;
      const BlockId fresh = pop_free();
      ref_[size_t(fresh)] = 1;
      --ref_[size_t(slot)];
      copies.push_back({slot, fresh});
      slot = fresh;
    }
  }
  for (int64_t i = have; i < want; ++i) {
    const BlockId fresh = pop_free();
    ref_[size_t(fresh)] = 1;
    table.blocks.push_back(fresh);
  }
  return true;
}

void BlockManager::fork(const BlockTable& parent, BlockTable& child) {
  KITE_CHECK(&parent != &child && child.blocks.empty() && child.hashes.empty(), "fork needs an empty child table");
  for (BlockId b : parent.blocks)
    KITE_CHECK(b >= 0 && b < num_blocks() && ref_[size_t(b)] > 0, "fork: parent holds block {} with ref count {}", b,
               b >= 0 && b < num_blocks() ? ref_[size_t(b)] : -1);
  for (BlockId b : parent.blocks) ++ref_[size_t(b)];
  child.blocks = parent.blocks;
  child.hashes = parent.hashes;
  child.num_cached_tokens = parent.num_cached_tokens;
}

void BlockManager::free(BlockTable& table) {
  for (BlockId b : table.blocks)
    KITE_CHECK(b >= 0 && b < num_blocks() && ref_[size_t(b)] > 0, "free: block {} has ref count {} (freed twice?)", b,
               b >= 0 && b < num_blocks() ? ref_[size_t(b)] : -1);
  // Tail first: the prefix is freed last, so it is evicted last.
  for (auto it = table.blocks.rbegin(); it != table.blocks.rend(); ++it) {
    KITE_CHECK(ref_[size_t(*it)] > 0, "free: block {} appears twice in one table", *it);
    if (--ref_[size_t(*it)] == 0) push_free(*it);
  }
  table.blocks.clear();
  table.hashes.clear();
  table.num_cached_tokens = 0;
}

// ---- invariants ---------------------------------------------------------------

void BlockManager::check_invariants() const {
  const int64_t n = num_blocks();
  if (int64_t(prev_.size()) != n || int64_t(next_.size()) != n || int64_t(cached_.size()) != n)
    broken("per-block arrays have different sizes");
  if (num_free_ < 0 || num_free_ > n)
    broken("free + used == total: " + std::to_string(num_free_) + " free of " + std::to_string(n));
  for (int64_t b = 0; b < n; ++b)
    if (ref_[size_t(b)] < 0)
      broken("ref count >= 0: block " + std::to_string(b) + " has " + std::to_string(ref_[size_t(b)]));

  std::vector<uint8_t> in_list(size_t(n), 0);
  int64_t count = 0;
  BlockId prev = kNone;
  for (BlockId b = head_; b != kNone; b = next_[size_t(b)]) {
    if (b < 0 || b >= n) broken("free list well-formed: link to block " + std::to_string(b));
    if (in_list[size_t(b)]) broken("free list well-formed: cycle at block " + std::to_string(b));
    if (prev_[size_t(b)] != prev) broken("free list well-formed: prev/next disagree at block " + std::to_string(b));
    in_list[size_t(b)] = 1;
    prev = b;
    ++count;
  }
  if (tail_ != prev)
    broken("free list well-formed: tail is " + std::to_string(tail_) + ", last is " + std::to_string(prev));
  if (count != num_free_)
    broken("free list length " + std::to_string(count) + " == num_free " + std::to_string(num_free_));
  for (int64_t b = 0; b < n; ++b)
    if (bool(in_list[size_t(b)]) != (ref_[size_t(b)] == 0))
      broken("a block is in the free pool iff its ref count is 0: block " + std::to_string(b) + " (ref " +
             std::to_string(ref_[size_t(b)]) + ", in pool " + std::to_string(int(in_list[size_t(b)])) + ")");

  if (!prefix_caching_ && !cache_.empty()) broken("prefix caching is off but the cache map is not empty");
  std::vector<uint8_t> seen(size_t(n), 0);
  for (const auto& [h, b] : cache_) {
    if (b < 0 || b >= n) broken("cache map points at block " + std::to_string(b));
    if (!cached_[size_t(b)] || hash_[size_t(b)] != h)
      broken("cache map and block hashes agree: entry for block " + std::to_string(b));
    if (seen[size_t(b)]++) broken("at most one cache map entry per block: block " + std::to_string(b));
  }
  const auto marked = std::count(cached_.begin(), cached_.end(), uint8_t(1));
  if (size_t(marked) != cache_.size())
    broken("cache map and block hashes agree: " + std::to_string(marked) + " cached blocks, " +
           std::to_string(cache_.size()) + " map entries");
}

}  // namespace kite
