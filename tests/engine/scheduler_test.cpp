// Scheduler behaviour and invariants, with a simulated model: a scheduled
// chunk "computes" its tokens and a sampling chunk appends one token.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <memory>
#include <random>
#include <set>

namespace kite {
namespace {

struct Sim {
  BlockManager bm;
  Scheduler sched;
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<int64_t> target;  // total tokens at which each sequence finishes
  uint64_t next = 0;

  Sim(int64_t blocks, int64_t block_size, SchedulerConfig cfg, bool prefix = true)
      : bm(blocks, block_size, prefix), sched(cfg, bm) {}

  Sequence* add(std::vector<int32_t> prompt, int64_t gen, int32_t priority = 0) {
    auto s = std::make_unique<Sequence>();
    s->id = next;
    s->arrival = next++;
    s->priority = priority;
    s->num_prompt_tokens = int64_t(prompt.size());
    s->tokens = std::move(prompt);
    sched.add(s.get());
    target.push_back(s->num_prompt_tokens + gen);
    seqs.push_back(std::move(s));
    return seqs.back().get();
  }

  // One step; returns the schedule. Sampling chunks append token 7 + id.
  SchedulerOutput step() {
    std::set<const Sequence*> decodes;  // running with one token to go: they must come first
    for (const Sequence* r : sched.running())
      if (r->remaining() == 1) decodes.insert(r);
    SchedulerOutput out = sched.schedule();
    check(out, decodes);
    std::vector<bool> sampled;
    for (const auto& c : out.chunks) sampled.push_back(c.samples());
    sched.finish_step(out);
    for (size_t i = 0; i < out.chunks.size(); ++i) {
      Sequence* s = out.chunks[i].seq;
      if (!sampled[i]) continue;
      s->tokens.push_back(int32_t(7 + s->id % 100));
      if (s->num_tokens() >= target[size_t(s->id)]) sched.remove(s);
    }
    bm.check_invariants();
    return out;
  }

  void check(const SchedulerOutput& out, const std::set<const Sequence*>& decodes) {
    bm.check_invariants();
    const SchedulerConfig& cfg = sched.config();
    int64_t total = 0;
    bool seen_prefill = false;
    std::set<const Sequence*> in_batch;
    for (const auto& c : out.chunks) {
      ASSERT_GT(c.num_tokens, 0);
      total += c.num_tokens;
      ASSERT_TRUE(in_batch.insert(c.seq).second) << "sequence scheduled twice";
      ASSERT_EQ(c.seq->status, SeqStatus::Running);
      // The table covers every slot the chunk writes, and those blocks are private.
      const int64_t end = c.seq->num_computed + c.num_tokens;
      ASSERT_GE(int64_t(c.seq->blocks.blocks.size()) * bm.block_size(), end);
      for (int64_t b = c.seq->num_computed / bm.block_size(); b < bm.blocks_for(end); ++b)
        ASSERT_EQ(bm.ref_count(c.seq->blocks.blocks[size_t(b)]), 1) << "write into a shared block";
      // Decodes of running sequences come before any prefill chunk.
      const bool decode = decodes.count(c.seq) > 0;
      if (!decode) seen_prefill = true;
      ASSERT_FALSE(decode && seen_prefill) << "a decode scheduled after a prefill chunk";
    }
    ASSERT_EQ(total, out.num_tokens);
    ASSERT_LE(total, cfg.max_num_batched_tokens);
    ASSERT_LE(int64_t(out.chunks.size()), cfg.max_num_seqs);
    ASSERT_EQ(bm.num_free_blocks() + bm.num_used_blocks(), bm.num_blocks());
  }
};

std::vector<int32_t> tokens(int64_t n, int32_t base) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = base + int32_t(i);
  return v;
}

TEST(Scheduler, ChunkedPrefillSplitsALongPromptAndDecodesGoFirst) {
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 32;
  Sim sim(64, 16, cfg);
  Sequence* a = sim.add(tokens(10, 100), 20);
  auto out = sim.step();  // a's whole prompt
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].num_tokens, 10);
  Sequence* b = sim.add(tokens(100, 500), 5);
  out = sim.step();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[0].seq, a);  // the decode first
  EXPECT_EQ(out.chunks[0].num_tokens, 1);
  EXPECT_EQ(out.chunks[1].seq, b);
  EXPECT_EQ(out.chunks[1].num_tokens, 31);  // the rest of the budget
  EXPECT_FALSE(out.chunks[1].samples());
  out = sim.step();
  EXPECT_EQ(out.chunks[1].num_tokens, 31);
  out = sim.step();
  EXPECT_EQ(out.chunks[1].num_tokens, 31);
  out = sim.step();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[1].num_tokens, 7);  // 100 = 31 * 3 + 7
  EXPECT_EQ(b->num_computed, 100);
  EXPECT_EQ(b->num_tokens(), 101);  // the last chunk sampled a token
}

TEST(Scheduler, WithoutChunkingAPromptWaitsForAWholeBudget) {
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 40;
  cfg.enable_chunked_prefill = false;
  Sim sim(64, 16, cfg);
  sim.add(tokens(30, 1), 5);
  sim.add(tokens(30, 200), 5);
  auto out = sim.step();
  ASSERT_EQ(out.chunks.size(), 1u);  // the second would need chunking
  EXPECT_EQ(out.chunks[0].num_tokens, 30);
  out = sim.step();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[1].num_tokens, 30);
}

TEST(Scheduler, PreemptsTheNewestWhenBlocksRunOutAndResumesIt) {
  SchedulerConfig cfg;
  Sim sim(4, 4, cfg, /*prefix=*/false);      // 16 slots
  Sequence* a = sim.add(tokens(7, 1), 9);    // needs 16 slots at the end
  Sequence* b = sim.add(tokens(7, 100), 9);  // likewise
  sim.step();
  EXPECT_EQ(sim.bm.num_free_blocks(), 0);
  bool preempted_b = false;
  for (int i = 0; i < 40 && (a->status != SeqStatus::Finished || b->status != SeqStatus::Finished); ++i) {
    auto out = sim.step();
    for (Sequence* p : out.preempted) {
      EXPECT_EQ(p, b) << "the older sequence must keep running";
      EXPECT_EQ(p->status, SeqStatus::Waiting);
      EXPECT_EQ(p->num_computed, 0);
      EXPECT_TRUE(p->blocks.blocks.empty());
      preempted_b = true;
    }
  }
  EXPECT_TRUE(preempted_b);
  EXPECT_EQ(a->status, SeqStatus::Finished);
  EXPECT_EQ(b->status, SeqStatus::Finished);
  EXPECT_EQ(a->num_tokens(), 16);
  EXPECT_EQ(b->num_tokens(), 16);
  EXPECT_EQ(sim.bm.num_free_blocks(), 4);
  EXPECT_GE(sim.sched.num_preemptions(), 1);
}

TEST(Scheduler, PriorityPolicyOrdersWaitingAndPicksTheVictim) {
  SchedulerConfig cfg;
  cfg.policy = SchedulePolicy::Priority;
  cfg.max_num_seqs = 1;
  Sim sim(64, 16, cfg);
  Sequence* low = sim.add(tokens(5, 1), 3, /*priority=*/5);
  Sequence* high = sim.add(tokens(5, 50), 3, /*priority=*/0);
  auto out = sim.step();
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].seq, high);
  EXPECT_EQ(low->status, SeqStatus::Waiting);
}

TEST(Scheduler, PrefixHitsSkipComputedBlocks) {
  SchedulerConfig cfg;
  Sim sim(64, 4, cfg);
  std::vector<int32_t> shared = tokens(13, 1);
  Sequence* a = sim.add(shared, 2);
  sim.step();  // computes 13 tokens: blocks 0..2 full and cached
  Sequence* b = sim.add(shared, 2);
  auto out = sim.step();
  const ScheduledChunk* cb = nullptr;
  for (auto& c : out.chunks)
    if (c.seq == b) cb = &c;
  ASSERT_NE(cb, nullptr);
  EXPECT_EQ(b->blocks.num_cached_tokens, 12);
  EXPECT_EQ(cb->num_tokens, 1);  // only the last prompt token is recomputed
  EXPECT_EQ(b->blocks.blocks[0], a->blocks.blocks[0]);
  EXPECT_GT(sim.bm.prefix_stats().hit_tokens, 0);
}

// Random arrivals, lengths, aborts and tiny pools: invariants after every
// step, every sequence finishes with its full length, all blocks return.
TEST(Scheduler, PropertyRandomWorkloadsKeepInvariants) {
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    std::mt19937 rng(seed);
    SchedulerConfig cfg;
    cfg.max_num_batched_tokens = std::uniform_int_distribution<int64_t>(8, 96)(rng);
    cfg.max_num_seqs = std::uniform_int_distribution<int64_t>(1, 12)(rng);
    cfg.policy = seed % 3 == 0 ? SchedulePolicy::Priority : SchedulePolicy::Fcfs;
    const int64_t bs = std::array<int64_t, 3>{1, 4, 16}[seed % 3];
    const int64_t max_len = 60;
    const int64_t blocks =
        std::max<int64_t>((max_len + bs - 1) / bs, std::uniform_int_distribution<int64_t>(4, 40)(rng));
    Sim sim(blocks, bs, cfg, seed % 2 == 0);
    std::vector<std::vector<int32_t>> prefixes = {tokens(24, 1000), tokens(9, 2000), tokens(40, 3000)};
    int added = 0, aborted = 0;
    for (int stepno = 0; stepno < 3000; ++stepno) {
      if (added < 40 && rng() % 3 == 0) {
        std::vector<int32_t> p = prefixes[rng() % 3];
        p.resize(size_t(std::uniform_int_distribution<int64_t>(1, int64_t(p.size()))(rng)));
        for (int64_t extra = std::uniform_int_distribution<int64_t>(0, 8)(rng); extra > 0; --extra)
          p.push_back(int32_t(rng() % 50));
        const int64_t gen = std::uniform_int_distribution<int64_t>(1, max_len - int64_t(p.size()))(rng);
        sim.add(p, gen, int32_t(rng() % 3));
        ++added;
      }
      if (rng() % 40 == 0 && !sim.seqs.empty()) {  // abort a random live sequence
        Sequence* s = sim.seqs[rng() % sim.seqs.size()].get();
        if (s->status != SeqStatus::Finished) {
          sim.sched.remove(s);
          sim.target[size_t(s->id)] = s->num_tokens();
          ++aborted;
        }
      }
      sim.step();
      if (HasFatalFailure()) return;
      if (added == 40 && sim.sched.num_running() == 0 && sim.sched.num_waiting() == 0) break;
    }
    EXPECT_EQ(sim.sched.num_running() + sim.sched.num_waiting(), 0) << "seed " << seed << ": work left (starved?)";
    for (auto& s : sim.seqs) {
      EXPECT_EQ(s->status, SeqStatus::Finished) << "seed " << seed;
      EXPECT_EQ(s->num_tokens(), sim.target[size_t(s->id)]) << "seed " << seed;
      EXPECT_TRUE(s->blocks.blocks.empty());
    }
    EXPECT_EQ(sim.bm.num_free_blocks(), sim.bm.num_blocks()) << "seed " << seed << ": blocks leaked";
  }
}

}  // namespace
}  // namespace kite
