#include "engine/block_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"

namespace kite {

// Friend of BlockManager: forges hash collisions and corrupts state so the
// tests can reach the verification and invariant paths.
struct BlockManagerTestPeer {
  // Re-registers cached block b under `key` (dropping whatever held `key`),
  // as if its contents hashed to `key`: a hash collision that keeps every
  // invariant check_invariants() knows.
  static void rekey(BlockManager& bm, BlockId b, uint64_t key) {
    ASSERT_TRUE(bm.cached_[size_t(b)]);
    bm.cache_.erase(bm.hash_[size_t(b)]);
    if (auto it = bm.cache_.find(key); it != bm.cache_.end()) {
      bm.cached_[size_t(it->second)] = 0;
      bm.cache_.erase(it);
    }
    bm.cache_[key] = b;
    bm.hash_[size_t(b)] = key;
  }
  static void set_ref(BlockManager& bm, BlockId b, int32_t r) { bm.ref_[size_t(b)] = r; }
  static void set_next(BlockManager& bm, BlockId b, BlockId next) { bm.next_[size_t(b)] = next; }
  static void set_prev(BlockManager& bm, BlockId b, BlockId prev) { bm.prev_[size_t(b)] = prev; }
  static void set_num_free(BlockManager& bm, int64_t n) { bm.num_free_ = n; }
  static void set_hash(BlockManager& bm, BlockId b, uint64_t h) { bm.hash_[size_t(b)] = h; }
  static void add_entry(BlockManager& bm, uint64_t key, BlockId b) { bm.cache_[key] = b; }
  static size_t cache_entries(const BlockManager& bm) { return bm.cache_.size(); }
};

namespace {

using Peer = BlockManagerTestPeer;

std::vector<int32_t> tokens_from(int32_t start, int n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::span<const int32_t> head(const std::vector<int32_t>& v, size_t n) { return std::span<const int32_t>(v).first(n); }

// Computes slots [from, to) of `t` (allocate, then cache the full blocks),
// as the engine does around a forward pass with no shared blocks involved.
void compute(BlockManager& bm, BlockTable& t, const std::vector<int32_t>& tokens, int64_t from, int64_t to,
             uint64_t extra_key = 0) {
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(t, from, to, copies));
  ASSERT_TRUE(copies.empty());
  bm.cache_full_blocks(t, tokens, to, extra_key);
  ASSERT_NO_THROW(bm.check_invariants());
}

// Expects check_invariants() to throw std::logic_error mentioning `what`.
void expect_broken(const BlockManager& bm, const std::string& what) {
  try {
    bm.check_invariants();
    ADD_FAILURE() << "check_invariants() accepted a broken state (" << what << ")";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(BlockManager, BlocksFor) {
  BlockManager bm(4, 16);
  EXPECT_EQ(bm.blocks_for(0), 0);
  EXPECT_EQ(bm.blocks_for(1), 1);
  EXPECT_EQ(bm.blocks_for(16), 1);
  EXPECT_EQ(bm.blocks_for(17), 2);
  EXPECT_EQ(bm.blocks_for(32), 2);
  EXPECT_EQ(bm.blocks_for(33), 3);
  BlockManager one(4, 1);
  EXPECT_EQ(one.blocks_for(5), 5);
  EXPECT_EQ(one.blocks_for(0), 0);
}

TEST(BlockManager, AllocateFreeAccounting) {
  BlockManager bm(10, 16);
  EXPECT_EQ(bm.num_blocks(), 10);
  EXPECT_EQ(bm.block_size(), 16);
  EXPECT_EQ(bm.num_free_blocks(), 10);
  EXPECT_EQ(bm.num_used_blocks(), 0);
  BlockTable t;
  std::vector<BlockCopy> copies;
  EXPECT_EQ(bm.blocks_needed(t, 0, 40), 3);
  ASSERT_TRUE(bm.allocate_slots(t, 0, 40, copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(t.blocks, (std::vector<BlockId>{0, 1, 2}));  // a fresh pool hands out blocks in order
  EXPECT_EQ(bm.num_free_blocks(), 7);
  EXPECT_EQ(bm.num_used_blocks(), 3);
  for (BlockId b : t.blocks) EXPECT_EQ(bm.ref_count(b), 1);
  bm.check_invariants();

  EXPECT_EQ(bm.blocks_needed(t, 40, 48), 0);  // still inside block 2
  ASSERT_TRUE(bm.allocate_slots(t, 40, 48, copies));
  EXPECT_EQ(t.blocks.size(), 3u);
  EXPECT_EQ(bm.blocks_needed(t, 48, 49), 1);
  ASSERT_TRUE(bm.allocate_slots(t, 48, 49, copies));
  EXPECT_EQ(t.blocks, (std::vector<BlockId>{0, 1, 2, 3}));
  EXPECT_EQ(bm.num_free_blocks(), 6);
  EXPECT_EQ(bm.blocks_needed(t, 0, 10), 0);  // a table never shrinks
  EXPECT_EQ(bm.num_free_blocks() + bm.num_used_blocks(), bm.num_blocks());

  bm.free(t);
  EXPECT_TRUE(t.blocks.empty());
  EXPECT_TRUE(t.hashes.empty());
  EXPECT_EQ(bm.num_free_blocks(), 10);
  for (BlockId b = 0; b < 10; ++b) EXPECT_EQ(bm.ref_count(b), 0);
  bm.check_invariants();
  bm.free(t);  // freeing an empty table is a no-op
  EXPECT_EQ(bm.num_free_blocks(), 10);
}

TEST(BlockManager, PrefixHitReusesFullBlocks) {
  BlockManager bm(16, 16);
  const auto prompt = tokens_from(100, 40);
  BlockTable a;
  EXPECT_EQ(bm.acquire_prefix(a, prompt), 0);  // empty cache
  compute(bm, a, prompt, 0, 40);
  ASSERT_EQ(a.blocks.size(), 3u);
  EXPECT_EQ(a.hashes.size(), 2u);  // the partial third block is not hashed
  EXPECT_EQ(bm.num_used_blocks(), 3);

  EXPECT_EQ(bm.cached_prefix_tokens(prompt), 32);
  BlockTable b;
  EXPECT_EQ(bm.acquire_prefix(b, prompt), 32);
  EXPECT_EQ(b.blocks, (std::vector<BlockId>{a.blocks[0], a.blocks[1]}));
  EXPECT_EQ(b.hashes, a.hashes);
  EXPECT_EQ(b.num_cached_tokens, 32);
  EXPECT_EQ(bm.ref_count(a.blocks[0]), 2);
  EXPECT_EQ(bm.ref_count(a.blocks[1]), 2);
  EXPECT_EQ(bm.ref_count(a.blocks[2]), 1);
  EXPECT_EQ(bm.num_used_blocks(), 3);  // nothing new taken
  bm.check_invariants();

  // The rest of the prompt goes into a private block.
  std::vector<BlockCopy> copies;
  EXPECT_EQ(bm.blocks_needed(b, 32, 40), 1);
  ASSERT_TRUE(bm.allocate_slots(b, 32, 40, copies));
  EXPECT_TRUE(copies.empty());
  ASSERT_EQ(b.blocks.size(), 3u);
  EXPECT_NE(b.blocks[2], a.blocks[2]);
  EXPECT_EQ(bm.num_used_blocks(), 4);

  // The hit never covers the whole prompt: one token is always computed.
  EXPECT_EQ(bm.cached_prefix_tokens(head(prompt, 32)), 16);
  EXPECT_EQ(bm.cached_prefix_tokens(head(prompt, 33)), 32);
  EXPECT_EQ(bm.cached_prefix_tokens(head(prompt, 17)), 16);
  EXPECT_EQ(bm.cached_prefix_tokens(head(prompt, 16)), 0);
  EXPECT_EQ(bm.cached_prefix_tokens(head(prompt, 1)), 0);
  EXPECT_EQ(bm.cached_prefix_tokens({}), 0);
  BlockTable c;
  EXPECT_EQ(bm.acquire_prefix(c, head(prompt, 32)), 16);
  EXPECT_EQ(c.blocks, (std::vector<BlockId>{a.blocks[0]}));

  // A prompt that differs in its second block shares only the first.
  auto other = prompt;
  other[20] = 7;
  EXPECT_EQ(bm.cached_prefix_tokens(other), 16);
  other[3] = 7;
  EXPECT_EQ(bm.cached_prefix_tokens(other), 0);

  // Freed blocks stay cached.
  bm.free(a);
  bm.free(b);
  bm.free(c);
  EXPECT_EQ(bm.num_free_blocks(), 16);
  EXPECT_EQ(bm.cached_prefix_tokens(prompt), 32);
  bm.check_invariants();
}

TEST(BlockManager, ExtraKeySeparatesCaches) {
  BlockManager bm(16, 16);
  const auto prompt = tokens_from(0, 40);
  BlockTable a;
  EXPECT_EQ(bm.acquire_prefix(a, prompt, 7), 0);
  compute(bm, a, prompt, 0, 40, 7);
  EXPECT_EQ(bm.cached_prefix_tokens(prompt, 7), 32);
  EXPECT_EQ(bm.cached_prefix_tokens(prompt, 0), 0);
  EXPECT_EQ(bm.cached_prefix_tokens(prompt, 8), 0);
  BlockTable b;
  EXPECT_EQ(bm.acquire_prefix(b, prompt, 8), 0);
  compute(bm, b, prompt, 0, 40, 8);
  EXPECT_NE(b.hashes[0], a.hashes[0]);
  EXPECT_NE(b.hashes[1], a.hashes[1]);
  EXPECT_EQ(bm.cached_prefix_tokens(prompt, 8), 32);
  BlockTable c;
  ASSERT_EQ(bm.acquire_prefix(c, prompt, 8), 32);
  EXPECT_EQ(c.blocks, (std::vector<BlockId>{b.blocks[0], b.blocks[1]}));
  bm.check_invariants();
}

TEST(BlockManager, EvictsSequenceTailBeforeHead) {
  BlockManager bm(6, 4);
  const auto a_tokens = tokens_from(0, 13);
  BlockTable a;
  compute(bm, a, a_tokens, 0, 12);
  ASSERT_EQ(a.blocks, (std::vector<BlockId>{0, 1, 2}));
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 12);
  bm.free(a);  // pool, least recently freed first: 3 4 5 2 1 0
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 12);

  const auto x_tokens = tokens_from(1000, 24);
  BlockTable x;
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(x, 0, 12, copies));
  EXPECT_EQ(x.blocks, (std::vector<BlockId>{3, 4, 5}));  // never-cached blocks first (they were freed earlier)
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 12);
  ASSERT_TRUE(bm.allocate_slots(x, 12, 16, copies));
  EXPECT_EQ(x.blocks.back(), 2);  // a's tail
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 8);
  ASSERT_TRUE(bm.allocate_slots(x, 16, 20, copies));
  EXPECT_EQ(x.blocks.back(), 1);
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 4);
  ASSERT_TRUE(bm.allocate_slots(x, 20, 24, copies));
  EXPECT_EQ(x.blocks.back(), 0);  // a's head goes last
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 0);
  EXPECT_EQ(Peer::cache_entries(bm), 0u);  // eviction removed every hash
  EXPECT_FALSE(bm.allocate_slots(x, 24, 25, copies));
  bm.check_invariants();
}

TEST(BlockManager, EvictsLeastRecentlyFreedFirst) {
  BlockManager bm(4, 4);
  const auto a_tokens = tokens_from(0, 5), b_tokens = tokens_from(50, 5);
  BlockTable a, b;
  compute(bm, a, a_tokens, 0, 4);
  compute(bm, b, b_tokens, 0, 4);
  ASSERT_EQ(a.blocks, std::vector<BlockId>{0});
  ASSERT_EQ(b.blocks, std::vector<BlockId>{1});
  bm.free(b);  // pool: 2 3 1 0
  bm.free(a);
  BlockTable x;
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(x, 0, 8, copies));
  EXPECT_EQ(x.blocks, (std::vector<BlockId>{2, 3}));
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 4);
  EXPECT_EQ(bm.cached_prefix_tokens(b_tokens), 4);
  ASSERT_TRUE(bm.allocate_slots(x, 8, 12, copies));
  EXPECT_EQ(x.blocks.back(), 1);  // b was freed before a
  EXPECT_EQ(bm.cached_prefix_tokens(b_tokens), 0);
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 4);
  bm.check_invariants();
}

TEST(BlockManager, RevivesCachedFreeBlockFromTheMiddle) {
  BlockManager bm(3, 4);
  const auto a_tokens = tokens_from(0, 5), b_tokens = tokens_from(10, 5), c_tokens = tokens_from(20, 5);
  BlockTable a, b, c;
  compute(bm, a, a_tokens, 0, 4);
  compute(bm, b, b_tokens, 0, 4);
  compute(bm, c, c_tokens, 0, 4);
  bm.free(a);
  bm.free(b);
  bm.free(c);  // pool: 0 (a) 1 (b) 2 (c)
  EXPECT_EQ(bm.num_free_blocks(), 3);

  BlockTable b2;
  EXPECT_EQ(bm.acquire_prefix(b2, b_tokens), 4);
  EXPECT_EQ(b2.blocks, std::vector<BlockId>{1});
  EXPECT_EQ(bm.ref_count(1), 1);
  EXPECT_EQ(bm.num_free_blocks(), 2);
  bm.check_invariants();

  BlockTable x;
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(x, 0, 8, copies));
  EXPECT_EQ(x.blocks, (std::vector<BlockId>{0, 2}));  // LRU order of the rest kept
  EXPECT_EQ(bm.cached_prefix_tokens(a_tokens), 0);
  EXPECT_EQ(bm.cached_prefix_tokens(c_tokens), 0);
  EXPECT_EQ(bm.cached_prefix_tokens(b_tokens), 4);  // held by b2, not evicted
  EXPECT_FALSE(bm.allocate_slots(x, 8, 9, copies));
  bm.check_invariants();
}

TEST(BlockManager, ForkSharesBlocksAndCopiesOnWrite) {
  BlockManager bm(8, 16);
  const auto prompt = tokens_from(0, 20);
  BlockTable parent;
  compute(bm, parent, prompt, 0, 20);
  ASSERT_EQ(parent.blocks.size(), 2u);
  const BlockId full = parent.blocks[0], partial = parent.blocks[1];

  BlockTable child;
  bm.fork(parent, child);
  EXPECT_EQ(child.blocks, parent.blocks);
  EXPECT_EQ(child.hashes, parent.hashes);
  EXPECT_EQ(bm.ref_count(full), 2);
  EXPECT_EQ(bm.ref_count(partial), 2);
  EXPECT_EQ(bm.num_used_blocks(), 2);
  bm.check_invariants();

  // The child samples its own token 20: the shared partial block is copied.
  std::vector<BlockCopy> copies;
  EXPECT_EQ(bm.blocks_needed(child, 20, 21), 1);
  ASSERT_TRUE(bm.allocate_slots(child, 20, 21, copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, partial);
  EXPECT_EQ(copies[0].dst, child.blocks[1]);
  EXPECT_NE(child.blocks[1], partial);
  EXPECT_EQ(child.blocks[0], full);  // not written: still shared
  EXPECT_EQ(bm.ref_count(partial), 1);
  EXPECT_EQ(bm.ref_count(child.blocks[1]), 1);
  EXPECT_EQ(bm.ref_count(full), 2);
  EXPECT_EQ(bm.num_used_blocks(), 3);
  bm.check_invariants();

  // The parent is now the only holder of its block: no copy.
  copies.clear();
  EXPECT_EQ(bm.blocks_needed(parent, 20, 21), 0);
  ASSERT_TRUE(bm.allocate_slots(parent, 20, 21, copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(parent.blocks[1], partial);

  // A write spanning a shared partial block and a new block: one copy, one new.
  BlockTable twin;
  bm.fork(parent, twin);
  EXPECT_EQ(bm.blocks_needed(twin, 21, 40), 2);
  const int64_t free_before = bm.num_free_blocks();
  ASSERT_TRUE(bm.allocate_slots(twin, 21, 40, copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, partial);
  EXPECT_EQ(twin.blocks.size(), 3u);
  EXPECT_EQ(free_before - bm.num_free_blocks(), 2);
  EXPECT_EQ(bm.ref_count(full), 3);
  bm.check_invariants();

  bm.free(parent);
  bm.free(child);
  bm.free(twin);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  bm.check_invariants();
}

TEST(BlockManager, AllocateFailureChangesNothing) {
  BlockManager bm(4, 4);
  BlockTable a, b;
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(a, 0, 12, copies));
  ASSERT_TRUE(bm.allocate_slots(b, 0, 3, copies));
  EXPECT_EQ(bm.num_free_blocks(), 0);
  const auto b_before = b.blocks;
  EXPECT_EQ(bm.blocks_needed(b, 3, 12), 2);
  EXPECT_FALSE(bm.allocate_slots(b, 3, 12, copies));
  EXPECT_EQ(b.blocks, b_before);
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_TRUE(bm.allocate_slots(b, 3, 4, copies));  // fits in its block
  bm.check_invariants();

  // Short by copy-on-write replacements.
  BlockManager cow(3, 4);
  BlockTable parent, child;
  ASSERT_TRUE(cow.allocate_slots(parent, 0, 6, copies));
  cow.fork(parent, child);
  EXPECT_EQ(cow.blocks_needed(child, 6, 13), 3);  // 1 copy + 2 new, 1 free
  const auto child_before = child.blocks;
  EXPECT_FALSE(cow.allocate_slots(child, 6, 13, copies));
  EXPECT_EQ(child.blocks, child_before);
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(cow.num_free_blocks(), 1);
  EXPECT_EQ(cow.ref_count(parent.blocks[0]), 2);
  EXPECT_EQ(cow.ref_count(parent.blocks[1]), 2);
  EXPECT_EQ(cow.blocks_needed(child, 6, 8), 1);
  EXPECT_TRUE(cow.allocate_slots(child, 6, 8, copies));
  EXPECT_EQ(copies.size(), 1u);
  EXPECT_EQ(cow.num_free_blocks(), 0);
  cow.check_invariants();
}

TEST(BlockManager, HitRateStatistics) {
  BlockManager bm(16, 16);
  const auto prompt = tokens_from(0, 40), other = tokens_from(500, 40);
  BlockTable a, b, c;
  EXPECT_EQ(bm.acquire_prefix(a, prompt), 0);
  compute(bm, a, prompt, 0, 40);
  EXPECT_EQ(bm.acquire_prefix(b, prompt), 32);
  EXPECT_EQ(bm.acquire_prefix(c, other), 0);
  EXPECT_EQ(bm.prefix_stats().queried_tokens, 120);
  EXPECT_EQ(bm.prefix_stats().hit_tokens, 32);
  EXPECT_DOUBLE_EQ(bm.prefix_stats().hit_rate(), 32.0 / 120.0);
  (void)bm.cached_prefix_tokens(prompt);  // read-only: no statistics
  EXPECT_EQ(bm.prefix_stats().queried_tokens, 120);
  EXPECT_EQ(PrefixCacheStats{}.hit_rate(), 0.0);
}

TEST(BlockManager, PrefixCachingDisabledNeverHits) {
  BlockManager bm(16, 16, false);
  EXPECT_FALSE(bm.prefix_caching());
  const auto prompt = tokens_from(0, 40);
  BlockTable a;
  EXPECT_EQ(bm.acquire_prefix(a, prompt), 0);
  compute(bm, a, prompt, 0, 40);
  EXPECT_TRUE(a.hashes.empty());
  EXPECT_EQ(bm.cached_prefix_tokens(prompt), 0);
  BlockTable b;
  EXPECT_EQ(bm.acquire_prefix(b, prompt), 0);
  EXPECT_TRUE(b.blocks.empty());
  EXPECT_EQ(b.num_cached_tokens, 0);
  bm.free(a);
  EXPECT_EQ(bm.acquire_prefix(b, prompt), 0);
  EXPECT_EQ(bm.prefix_stats().queried_tokens, 0);
  EXPECT_EQ(bm.prefix_stats().hit_tokens, 0);
  EXPECT_EQ(Peer::cache_entries(bm), 0u);
  bm.check_invariants();
}

TEST(BlockManager, BadSizesThrowKiteError) {
  EXPECT_THROW(BlockManager(0, 16), Error);
  EXPECT_THROW(BlockManager(-3, 16), Error);
  EXPECT_THROW(BlockManager(16, 0), Error);
  EXPECT_THROW(BlockManager(16, -1), Error);
  EXPECT_THROW(BlockManager(int64_t(1) << 40, 16), Error);
  try {
    BlockManager bm(16, 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "block_size");
  }
  EXPECT_NO_THROW(BlockManager(1, 1));
}

TEST(BlockManager, DuplicateBlockStaysUncached) {
  BlockManager bm(8, 4);
  const auto prompt = tokens_from(0, 9);
  BlockTable a, b;
  compute(bm, a, prompt, 0, 8);
  compute(bm, b, prompt, 0, 8);  // same tokens computed again without a prefix hit
  EXPECT_EQ(b.hashes, a.hashes);
  EXPECT_EQ(Peer::cache_entries(bm), 2u);
  bm.free(b);  // b's blocks were never registered: nothing to serve
  BlockTable c;
  EXPECT_EQ(bm.acquire_prefix(c, prompt), 8);
  EXPECT_EQ(c.blocks, a.blocks);  // the first registrant keeps the prefix
  bm.free(a);
  bm.free(c);
  // Evicting b's (uncached) blocks leaves the prefix; evicting a's drops it.
  BlockTable x;
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(x, 0, 24, copies));
  EXPECT_EQ(bm.cached_prefix_tokens(prompt), 8);
  ASSERT_TRUE(bm.allocate_slots(x, 24, 32, copies));
  EXPECT_EQ(bm.cached_prefix_tokens(prompt), 0);
  bm.check_invariants();
}

TEST(BlockManager, ChainHashSeparatesNearbyBlocks) {
  // Every block below differs from the others (in a token bit, a token's
  // position, or the extra key); none may share a hash.
  std::vector<std::vector<int32_t>> blocks;
  const std::vector<int32_t> base = {17, 4242, 0, 99};
  for (size_t j = 0; j < base.size(); ++j)
    for (int bit = 0; bit < 31; ++bit) {
      auto v = base;
      v[j] ^= int32_t(1) << bit;
      blocks.push_back(v);
    }
  blocks.push_back(base);
  blocks.push_back({4242, 17, 0, 99});
  blocks.push_back({0, 0, 0, 0});
  blocks.push_back({0, 0, 0, 1});
  blocks.push_back({1, 0, 0, 0});
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> any(0, 1 << 30);
  for (int i = 0; i < 3000; ++i) blocks.push_back({any(rng), any(rng), any(rng), any(rng)});
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());

  const size_t n = blocks.size() + 64;
  BlockManager bm(int64_t(n), 4);
  std::vector<uint64_t> hashes;
  auto hash_of = [&](const std::vector<int32_t>& tokens, uint64_t extra_key) {
    BlockTable t;
    std::vector<BlockCopy> copies;
    EXPECT_TRUE(bm.allocate_slots(t, 0, 4, copies));
    bm.cache_full_blocks(t, tokens, 4, extra_key);
    hashes.push_back(t.hashes.at(0));
  };
  for (const auto& b : blocks) hash_of(b, 0);
  for (uint64_t extra : {1ull, 2ull, 3ull, 1ull << 32, ~0ull}) hash_of(base, extra);
  std::sort(hashes.begin(), hashes.end());
  EXPECT_EQ(std::adjacent_find(hashes.begin(), hashes.end()), hashes.end());
  bm.check_invariants();
}

TEST(BlockManager, HashCollisionNeverServesOtherTokens) {
  BlockManager bm(8, 4);
  const auto a_tokens = tokens_from(0, 9), b_tokens = tokens_from(100, 9);
  BlockTable a, b;
  compute(bm, a, a_tokens, 0, 8);
  compute(bm, b, b_tokens, 0, 8);
  EXPECT_EQ(bm.cached_prefix_tokens(b_tokens), 8);
  // a's first block now sits under the key of b's first block.
  Peer::rekey(bm, a.blocks[0], b.hashes[0]);
  bm.check_invariants();
  EXPECT_EQ(bm.cached_prefix_tokens(b_tokens), 0);
  BlockTable x;
  EXPECT_EQ(bm.acquire_prefix(x, b_tokens), 0);
  EXPECT_TRUE(x.blocks.empty());
  EXPECT_EQ(bm.ref_count(a.blocks[0]), 1);
  bm.check_invariants();
}

TEST(BlockManager, HashCollisionChecksTheParent) {
  BlockManager bm(8, 4);
  const auto shared = tokens_from(50, 4);
  const auto x_tokens = concat(concat(tokens_from(0, 4), shared), {1});
  const auto y_tokens = concat(concat(tokens_from(10, 4), shared), {1});
  BlockTable x, y;
  compute(bm, x, x_tokens, 0, 8);
  compute(bm, y, y_tokens, 0, 8);
  EXPECT_EQ(bm.cached_prefix_tokens(y_tokens), 8);
  // Same token ids, other chain: x's second block under y's second key.
  Peer::rekey(bm, x.blocks[1], y.hashes[1]);
  bm.check_invariants();
  EXPECT_EQ(bm.cached_prefix_tokens(y_tokens), 4);

  // Same token ids, other extra key.
  BlockTable z;
  compute(bm, z, x_tokens, 0, 8, 5);
  EXPECT_EQ(bm.cached_prefix_tokens(x_tokens, 5), 8);
  Peer::rekey(bm, x.blocks[0], z.hashes[0]);
  EXPECT_EQ(bm.cached_prefix_tokens(x_tokens, 5), 0);
  bm.check_invariants();
}

TEST(BlockManager, MisuseIsCaught) {
  BlockManager bm(8, 4);
  const auto prompt = tokens_from(0, 12);
  BlockTable a;
  compute(bm, a, prompt, 0, 10);
  std::vector<BlockCopy> copies;
  // Rewriting hashed (cached) slots would corrupt the cache.
  EXPECT_THROW(bm.allocate_slots(a, 0, 12, copies), std::logic_error);
  EXPECT_THROW(bm.blocks_needed(a, 4, 12), std::logic_error);
  EXPECT_THROW(bm.allocate_slots(a, 11, 10, copies), std::logic_error);
  EXPECT_THROW(bm.allocate_slots(a, -1, 10, copies), std::logic_error);
  BlockTable non_empty = {{0}, {}, 0};
  EXPECT_THROW(bm.acquire_prefix(non_empty, prompt), std::logic_error);
  EXPECT_THROW(bm.fork(a, non_empty), std::logic_error);
  EXPECT_THROW(bm.fork(a, a), std::logic_error);
  EXPECT_THROW(bm.cache_full_blocks(a, head(prompt, 8), 10), std::logic_error);  // fewer ids than computed
  EXPECT_THROW(bm.cache_full_blocks(a, prompt, 13), std::logic_error);           // beyond the table

  // Freeing the same blocks twice.
  BlockTable copy = a;
  bm.free(a);
  EXPECT_THROW(bm.free(copy), std::logic_error);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_THROW(bm.fork(copy, non_empty = {}), std::logic_error);
  bm.check_invariants();  // the checks fired before anything changed
}

TEST(BlockManager, CheckInvariantsDetectsCorruption) {
  auto fresh = [] {
    BlockManager bm(4, 4);
    BlockTable t;
    compute(bm, t, tokens_from(0, 8), 0, 8);  // blocks 0 1 used and cached; 2 3 free
    return bm;
  };
  {
    auto bm = fresh();
    bm.check_invariants();
    Peer::set_ref(bm, 0, -1);
    expect_broken(bm, "ref count >= 0");
  }
  {
    auto bm = fresh();
    Peer::set_ref(bm, 2, 1);  // in the pool with a reference
    expect_broken(bm, "free pool iff its ref count is 0");
  }
  {
    auto bm = fresh();
    Peer::set_ref(bm, 0, 0);  // unreferenced but not in the pool
    expect_broken(bm, "free pool iff its ref count is 0");
  }
  {
    auto bm = fresh();
    Peer::set_next(bm, 3, 2);
    expect_broken(bm, "cycle");
  }
  {
    auto bm = fresh();
    Peer::set_prev(bm, 3, 0);
    expect_broken(bm, "prev/next disagree");
  }
  {
    auto bm = fresh();
    Peer::set_num_free(bm, 3);
    expect_broken(bm, "num_free");
  }
  {
    auto bm = fresh();
    Peer::set_num_free(bm, 5);
    expect_broken(bm, "free + used == total");
  }
  {
    auto bm = fresh();
    Peer::set_hash(bm, 1, 12345);
    expect_broken(bm, "cache map and block hashes agree");
  }
  {
    auto bm = fresh();
    Peer::add_entry(bm, 777, 0);
    expect_broken(bm, "cache map and block hashes agree");
  }
  {
    auto bm = fresh();
    Peer::add_entry(bm, 777, 3);  // a free block never registered
    expect_broken(bm, "cache map and block hashes agree");
  }
}

// ---- property test ------------------------------------------------------------
//
// Random operations on simulated sequences against a shadow model: the
// shadow KV cache records which token id each slot of each block holds
// (written on compute, copied on copy-on-write), so a wrong prefix hit, a
// missing copy or a write into a shared block shows up as a sequence whose
// blocks hold other tokens than its own.

struct SimSeq {
  BlockTable table;
  std::vector<int32_t> tokens;  // known ids (prompt, then sampled); >= computed
  int64_t computed = 0;
  uint64_t extra_key = 0;
};

class Simulation {
 public:
  Simulation(uint32_t seed, int64_t num_blocks, int64_t block_size, bool caching)
      : rng_(seed), bm_(num_blocks, block_size, caching), bs_(block_size), kv_(size_t(num_blocks)) {
    for (auto& slots : kv_) slots.assign(size_t(block_size), -1);
    for (auto& p : prefixes_) p = random_tokens(uniform(0, int(3 * bs_ + 2)));
  }

  void run(int num_ops) {
    for (int op = 0; op < num_ops; ++op) {
      const int kind = uniform(0, 99);
      if (seqs_.empty() || (kind < 18 && seqs_.size() < kMaxSeqs)) {
        create();
      } else if (kind < 60) {
        write(pick());
      } else if (kind < 70) {
        cache(pick());
      } else if (kind < 78 && seqs_.size() < kMaxSeqs) {
        fork(pick());
      } else if (kind < 92) {
        release(pick());
      } else {
        recreate(pick());
      }
      if (::testing::Test::HasFatalFailure()) return;
      check(op);
      if (::testing::Test::HasFatalFailure()) return;
    }
    while (!seqs_.empty()) release(0);
    check(num_ops);
    ASSERT_EQ(bm_.num_free_blocks(), bm_.num_blocks());
    ops_done_ = num_ops;
  }

  int64_t hits() const { return hits_; }
  int64_t cow_copies() const { return cow_copies_; }
  int64_t failed_allocs() const { return failed_allocs_; }

 private:
  static constexpr size_t kMaxSeqs = 10;

  int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  size_t pick() { return size_t(uniform(0, int(seqs_.size()) - 1)); }
  int32_t random_token() { return uniform(0, 3) ? uniform(0, 3) : uniform(0, 1000); }  // mostly tiny vocab
  std::vector<int32_t> random_tokens(int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = random_token();
    return v;
  }

  void add(std::vector<int32_t> tokens, uint64_t extra_key) {
    SimSeq s;
    s.tokens = std::move(tokens);
    s.extra_key = extra_key;
    const int64_t expect = bm_.cached_prefix_tokens(s.tokens, extra_key);
    const int64_t covered = bm_.acquire_prefix(s.table, s.tokens, extra_key);
    ASSERT_EQ(covered, expect);
    ASSERT_EQ(covered % bs_, 0);
    ASSERT_LE(covered, (int64_t(s.tokens.size()) - 1) / bs_ * bs_);
    if (!bm_.prefix_caching()) {
      ASSERT_EQ(covered, 0);
    }
    ASSERT_EQ(int64_t(s.table.blocks.size()) * bs_, covered);
    ASSERT_EQ(s.table.hashes.size(), s.table.blocks.size());
    ASSERT_EQ(s.table.num_cached_tokens, covered);
    if (bm_.prefix_caching()) {
      stats_.queried_tokens += int64_t(s.tokens.size());
      stats_.hit_tokens += covered;
    }
    hits_ += covered > 0;
    s.computed = covered;
    seqs_.push_back(std::move(s));
  }

  void create() {
    auto tokens = prefixes_[size_t(uniform(0, int(prefixes_.size()) - 1))];
    for (int n = uniform(1, int(2 * bs_)); n > 0; --n) tokens.push_back(random_token());
    add(std::move(tokens), uniform(0, 3) == 0 ? 1 : 0);
  }

  void write(size_t i) {
    SimSeq& s = seqs_[i];
    const int64_t first = s.computed, last = first + uniform(1, int(3 * bs_));
    while (int64_t(s.tokens.size()) < last) s.tokens.push_back(random_token());  // sampled
    const auto before = s.table.blocks;
    const int64_t free_before = bm_.num_free_blocks();
    const int64_t needed = bm_.blocks_needed(s.table, first, last);
    std::vector<BlockCopy> copies;
    const bool ok = bm_.allocate_slots(s.table, first, last, copies);
    ASSERT_EQ(ok, needed <= free_before);
    if (!ok) {
      ++failed_allocs_;
      ASSERT_EQ(s.table.blocks, before);
      ASSERT_TRUE(copies.empty());
      ASSERT_EQ(bm_.num_free_blocks(), free_before);
      return;
    }
    ASSERT_EQ(free_before - bm_.num_free_blocks(), needed);
    ASSERT_EQ(int64_t(s.table.blocks.size()), bm_.blocks_for(last));
    for (const BlockCopy& c : copies) {  // the engine copies before the forward pass
      const auto at = std::find(s.table.blocks.begin(), s.table.blocks.end(), c.dst);
      ASSERT_NE(at, s.table.blocks.end());
      ASSERT_EQ(before[size_t(at - s.table.blocks.begin())], c.src);
      kv_[size_t(c.dst)] = kv_[size_t(c.src)];
      ++cow_copies_;
    }
    for (int64_t b = first / bs_; b < bm_.blocks_for(last); ++b)
      ASSERT_EQ(bm_.ref_count(s.table.blocks[size_t(b)]), 1) << "written block " << b << " is shared";
    for (int64_t p = first; p < last; ++p)
      kv_[size_t(s.table.blocks[size_t(p / bs_)])][size_t(p % bs_)] = s.tokens[size_t(p)];
    s.computed = last;
    if (uniform(0, 1)) cache(i);
  }

  void cache(size_t i) {
    SimSeq& s = seqs_[i];
    bm_.cache_full_blocks(s.table, s.tokens, s.computed, s.extra_key);
    ASSERT_EQ(int64_t(s.table.hashes.size()), bm_.prefix_caching() ? s.computed / bs_ : 0);
  }

  void fork(size_t i) {
    SimSeq child;
    child.tokens = seqs_[i].tokens;
    child.computed = seqs_[i].computed;
    child.extra_key = seqs_[i].extra_key;
    bm_.fork(seqs_[i].table, child.table);
    ASSERT_EQ(child.table.blocks, seqs_[i].table.blocks);
    seqs_.push_back(std::move(child));
  }

  void release(size_t i) {
    bm_.free(seqs_[i].table);
    ASSERT_TRUE(seqs_[i].table.blocks.empty());
    seqs_.erase(seqs_.begin() + ptrdiff_t(i));
  }

  // Preemption by recompute: free, then start over with every known token
  // as the prompt.
  void recreate(size_t i) {
    auto tokens = seqs_[i].tokens;
    const uint64_t extra_key = seqs_[i].extra_key;
    release(i);
    add(std::move(tokens), extra_key);
  }

  void check(int op) {
    SCOPED_TRACE("after op " + std::to_string(op));
    ASSERT_NO_THROW(bm_.check_invariants());
    std::vector<int32_t> refs(size_t(bm_.num_blocks()), 0);
    for (const SimSeq& s : seqs_) {
      ASSERT_EQ(int64_t(s.table.blocks.size()), bm_.blocks_for(s.computed));  // covers the computed tokens
      ASSERT_LE(s.table.hashes.size(), size_t(s.computed / bs_));
      std::vector<BlockId> sorted = s.table.blocks;
      std::sort(sorted.begin(), sorted.end());
      ASSERT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "a block twice in one table";
      for (BlockId b : s.table.blocks) ++refs[size_t(b)];
      // The K/V the table points at is this sequence's own.
      for (int64_t p = 0; p < s.computed; ++p)
        ASSERT_EQ(kv_[size_t(s.table.blocks[size_t(p / bs_)])][size_t(p % bs_)], s.tokens[size_t(p)])
            << "slot " << p << " of a sequence holds another token";
    }
    int64_t unreferenced = 0;
    for (BlockId b = 0; b < bm_.num_blocks(); ++b) {
      ASSERT_EQ(bm_.ref_count(b), refs[size_t(b)]) << "block " << b;
      unreferenced += refs[size_t(b)] == 0;
    }
    ASSERT_EQ(bm_.num_free_blocks(), unreferenced);
    ASSERT_EQ(bm_.prefix_stats().queried_tokens, stats_.queried_tokens);
    ASSERT_EQ(bm_.prefix_stats().hit_tokens, stats_.hit_tokens);
  }

  std::mt19937 rng_;
  BlockManager bm_;
  int64_t bs_;
  std::vector<std::vector<int32_t>> kv_;  // block -> token id in each slot (-1 never written)
  std::vector<std::vector<int32_t>> prefixes_ = std::vector<std::vector<int32_t>>(3);
  std::vector<SimSeq> seqs_;
  PrefixCacheStats stats_;
  int64_t hits_ = 0, cow_copies_ = 0, failed_allocs_ = 0;
  int ops_done_ = 0;
};

TEST(BlockManagerProperty, RandomOperationsKeepKvAndAccountingRight) {
  int64_t hits = 0, copies = 0, failures = 0;
  for (bool caching : {true, false})
    for (int64_t num_blocks : {4, 7, 16, 64})
      for (int64_t block_size : {1, 4, 16})
        for (uint32_t seed : {1u, 2u, 3u}) {
          SCOPED_TRACE(::testing::Message() << "seed " << seed << ", " << num_blocks << " blocks of " << block_size
                                            << ", prefix caching " << caching);
          Simulation sim(seed * 7919u + uint32_t(num_blocks * 31 + block_size), num_blocks, block_size, caching);
          sim.run(3000);
          ASSERT_FALSE(::testing::Test::HasFatalFailure());
          if (caching) hits += sim.hits();
          if (!caching) {
            EXPECT_EQ(sim.hits(), 0);
          }
          copies += sim.cow_copies();
          failures += sim.failed_allocs();
        }
  // The random walk reached the interesting paths.
  EXPECT_GT(hits, 1000);
  EXPECT_GT(copies, 1000);
  EXPECT_GT(failures, 1000);
}

}  // namespace
}  // namespace kite
