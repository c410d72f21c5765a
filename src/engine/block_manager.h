#pragma once
// Paged KV-cache accounting (plain host C++; no tensors, no devices).
//
// A fixed pool of `num_blocks` blocks of `block_size` token slots. A
// sequence holds a BlockTable: block i of the table stores the K/V of its
// token positions [i * block_size, (i + 1) * block_size). Blocks carry
// reference counts: parallel samples (fork) and prefix-cache hits share
// blocks; a write into a shared block first replaces it by a private copy
// (copy-on-write, reported as a BlockCopy the engine performs before the
// forward pass).
//
// Prefix caching: once a block is full of computed tokens it is identified
// by a hash chain (hash of the previous block's hash, its token ids and an
// extra key mixed into the first block) and registered in the cache. A new
// sequence whose prompt starts with the same full blocks reuses them. Blocks
// whose reference count falls to 0 return to the free pool but keep their
// cached contents until evicted; the pool hands out the least recently
// freed block first (LRU), and a sequence's blocks are freed tail first so a
// prefix outlives its suffixes. Hits are verified against the stored token
// ids, so a hash collision can never return the wrong K/V.
//
// Invariants (docs/design/engine.md; check_invariants() verifies them):
//   free + used == total; every ref count >= 0; a block is in the free pool
//   iff its ref count is 0; the cache map and the blocks' hashes agree;
//   a prefix hit never covers the whole prompt.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace kite {

using BlockId = int32_t;

// The blocks one sequence holds, in position order.
struct BlockTable {
  std::vector<BlockId> blocks;
  // hashes[i] is the chain hash of full block i; hashes.size() <= blocks.size()
  // counts the leading blocks already hashed (and offered to the cache).
  std::vector<uint64_t> hashes;
  int64_t num_cached_tokens = 0;  // tokens covered by prefix-cache hits when the table was first filled
};

struct BlockCopy {
  BlockId src;
  BlockId dst;
};

struct PrefixCacheStats {
  int64_t queried_tokens = 0;  // prompt tokens looked up
  int64_t hit_tokens = 0;      // of those, tokens served from the cache
  double hit_rate() const { return queried_tokens ? double(hit_tokens) / double(queried_tokens) : 0.0; }
};

class BlockManager {
 public:
  // Throws kite::Error when num_blocks < 1 or block_size < 1.
  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching = true);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return int64_t(ref_.size()); }
  int64_t num_free_blocks() const { return num_free_; }  // ref count 0 (cached ones included)
  int64_t num_used_blocks() const { return num_blocks() - num_free_; }
  int32_t ref_count(BlockId b) const { return ref_[size_t(b)]; }
  bool prefix_caching() const { return prefix_caching_; }
  const PrefixCacheStats& prefix_stats() const { return stats_; }
  // Blocks needed to hold `num_tokens` token slots.
  int64_t blocks_for(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // Tokens of `tokens` that acquire_prefix would take from the cache now (a
  // multiple of block_size): the longest run of cached leading full blocks,
  // capped so at least one token is left to compute, i.e. at most
  // (tokens.size() - 1) / block_size blocks. Read-only; 0 when prefix caching
  // is off.
  int64_t cached_prefix_tokens(std::span<const int32_t> tokens, uint64_t extra_key = 0) const;

  // For an empty table: takes the cached leading full blocks of `tokens`
  // (ref count +1; a block in the free pool leaves it), sets
  // table.num_cached_tokens and table.hashes for them, updates the hit
  // statistics, and returns the tokens covered (as cached_prefix_tokens).
  // Returns 0 and changes nothing when prefix caching is off.
  int64_t acquire_prefix(BlockTable& table, std::span<const int32_t> tokens, uint64_t extra_key = 0);

  // Number of free blocks allocate_slots(table, first_write_slot, num_slots)
  // would take (new blocks plus copy-on-write replacements).
  int64_t blocks_needed(const BlockTable& table, int64_t first_write_slot, int64_t num_slots) const;

  // Grows `table` to cover slots [0, num_slots) with blocks from the free
  // pool (evicting cached contents as needed). Slots [first_write_slot,
  // num_slots) are about to be written: a block among them that is shared
  // (ref count > 1) is replaced by a fresh block and {old, new} appended to
  // `copies`. Returns false and changes nothing when the pool is short.
  // Needs 0 <= first_write_slot <= num_slots; slots already hashed by
  // cache_full_blocks (the first table.hashes.size() blocks) are never
  // rewritten (KITE_CHECK).
  bool allocate_slots(BlockTable& table, int64_t first_write_slot, int64_t num_slots, std::vector<BlockCopy>& copies);

  // Hashes the table's full blocks within its first `num_computed` tokens
  // that are not hashed yet and offers them to the prefix cache (a block
  // whose hash is already cached by another block stays uncached).
  // `tokens` holds at least num_computed ids.
  void cache_full_blocks(BlockTable& table, std::span<const int32_t> tokens, int64_t num_computed,
                         uint64_t extra_key = 0);

  // `child` (empty) shares every block of `parent` (ref counts +1) and
  // copies its hashes and num_cached_tokens.
  void fork(const BlockTable& parent, BlockTable& child);

  // Drops the table's references, tail first, and clears it.
  void free(BlockTable& table);

  // Throws std::logic_error naming the broken invariant (tests call it
  // after every step).
  void check_invariants() const;

 private:
  friend struct BlockManagerTestPeer;  // tests: forge hash collisions, corrupt state for check_invariants
  static constexpr BlockId kNone = -1;

  // Leading full blocks of `tokens` served by the cache (capped as in
  // cached_prefix_tokens); appends their ids and hashes to `out` if given.
  int64_t match_prefix(std::span<const int32_t> tokens, uint64_t extra_key, BlockTable* out) const;
  // Copy-on-write replacements allocate_slots(table, first, num_slots) needs;
  // checks the arguments.
  int64_t count_cow(const BlockTable& table, int64_t first_write_slot, int64_t num_slots) const;
  BlockId pop_free();  // least recently freed block; drops its cached contents
  void push_free(BlockId b);
  void unlink_free(BlockId b);

  int64_t block_size_;
  bool prefix_caching_;
  int64_t num_free_ = 0;
  std::vector<int32_t> ref_;
  PrefixCacheStats stats_;
  // Free pool: an intrusive doubly-linked list over block ids (kNone ends
  // it), head = least recently freed, tail = most recently freed.
  std::vector<BlockId> prev_, next_;
  BlockId head_ = kNone, tail_ = kNone;
  // Prefix cache: chain hash -> block. A registered block (cached_[b])
  // keeps its hash, its parent's hash (for the first block, the root derived
  // from the extra key) and its token ids ([num_blocks, block_size], only
  // allocated with prefix caching on), which verify every hit.
  std::unordered_map<uint64_t, BlockId> cache_;
  std::vector<uint8_t> cached_;
  std::vector<uint64_t> hash_, parent_hash_;
  std::vector<int32_t> tokens_;
};

}  // namespace kite
