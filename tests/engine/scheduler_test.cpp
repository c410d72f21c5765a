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

  Sequence* add(std::vector<int32_t> prompt, int64_t gen, int32_t priority = 0, uint64_t group = 0) {
    auto s = std::make_unique<Sequence>();
    s->id = next;
    s->arrival = next++;
    s->priority = priority;
    s->group = group;
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
    ASSERT_LE(sched.seats_used(), cfg.max_num_seqs);
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

// Fairness between request groups (docs/design/engine.md): a fan-out group
// holding every seat gives one up to a newly arrived group at once.
TEST(Scheduler, AFanOutGroupGivesASeatToANewGroup) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 8;
  Sim sim(256, 16, cfg);
  for (int i = 0; i < 16; ++i) sim.add(tokens(4, 100 * i), 50, 0, /*group=*/1);
  sim.step();
  sim.step();
  EXPECT_EQ(sim.sched.group_running(1), 8);
  EXPECT_EQ(sim.sched.num_waiting(), 8);
  Sequence* small = sim.add(tokens(4, 9000), 3, 0, /*group=*/2);
  auto out = sim.step();
  ASSERT_EQ(out.preempted.size(), 1u);  // the fan-out's newest running sequence
  EXPECT_EQ(out.preempted[0]->group, 1u);
  EXPECT_EQ(small->status, SeqStatus::Running);
  EXPECT_TRUE(std::any_of(out.chunks.begin(), out.chunks.end(), [&](const auto& c) { return c.seq == small; }));
  EXPECT_EQ(sim.sched.group_running(1), 7);
  EXPECT_EQ(sim.sched.group_running(2), 1);
  // The small request runs to its end beside the fan-out; the fan-out then
  // takes every seat again and finishes too.
  for (int i = 0; i < 400 && sim.sched.num_running() + sim.sched.num_waiting() > 0; ++i) sim.step();
  EXPECT_EQ(small->num_tokens(), 7);
  EXPECT_EQ(sim.sched.num_running() + sim.sched.num_waiting(), 0);
}

TEST(Scheduler, AdmissionTakesTheGroupHoldingFewestSeatsFirst) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 64;
  cfg.max_num_batched_tokens = 1 << 20;
  Sim sim(256, 16, cfg);
  for (int i = 0; i < 4; ++i) sim.add(tokens(4, 10 * i), 50, 0, /*group=*/1);  // arrive first
  for (int i = 0; i < 3; ++i) sim.add(tokens(4, 500 + 10 * i), 50, 0, /*group=*/2);
  sim.add(tokens(4, 900), 50, 0, /*group=*/3);
  std::vector<uint64_t> groups;
  for (const Sequence* s : sim.sched.waiting_in_order()) groups.push_back(s->group);
  EXPECT_EQ(groups, (std::vector<uint64_t>{1, 2, 3, 1, 2, 1, 2, 1}));
}

TEST(Scheduler, PrefillChunksGoRoundRobinAcrossGroups) {
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 64;
  Sim sim(256, 16, cfg);
  std::vector<Sequence*> fan;
  for (int i = 0; i < 4; ++i) fan.push_back(sim.add(tokens(200, 1000 * (i + 1)), 2, 0, /*group=*/1));
  sim.step();  // fan[0] takes the whole budget
  Sequence* other = sim.add(tokens(200, 9000), 2, 0, /*group=*/2);
  sim.step();  // fan[0]'s next chunk
  // Both groups now have a prefill running; each step the budget starts
  // with the first of each group.
  bool both = false;
  for (int i = 0; i < 8 && !both; ++i) {
    auto out = sim.step();
    ASSERT_FALSE(out.chunks.empty());
    if (out.chunks.size() >= 2) {
      EXPECT_NE(out.chunks[0].seq->group, out.chunks[1].seq->group) << "step " << i;
      both = true;
    }
  }
  EXPECT_TRUE(both);
  EXPECT_GT(other->num_computed, 0);
}

// A sequence that will fork n samples reserves n seats when admitted; its
// forks take them, so the batch never outgrows max_num_seqs.
TEST(Scheduler, ASequenceReservesSeatsForTheSamplesItWillFork) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 6;
  Sim sim(256, 16, cfg);
  Sequence* a = sim.add(tokens(4, 1), 20);
  a->seats = 4;
  Sequence* b = sim.add(tokens(4, 100), 20);
  b->seats = 4;
  sim.step();
  EXPECT_EQ(a->status, SeqStatus::Running);
  EXPECT_EQ(b->status, SeqStatus::Waiting);  // 4 + 4 > 6
  EXPECT_EQ(sim.sched.seats_used(), 4);
  // a's prompt is done: fork three samples into its reserved seats.
  std::vector<std::unique_ptr<Sequence>> kids;
  for (int i = 0; i < 3; ++i) {
    kids.push_back(std::make_unique<Sequence>(*a));
    kids.back()->id = 1000 + uint64_t(i);
    kids.back()->blocks = {};
    sim.bm.fork(a->blocks, kids.back()->blocks);
    sim.sched.add_running(kids.back().get(), a);
  }
  EXPECT_EQ(a->seats, 1);
  EXPECT_EQ(sim.sched.seats_used(), 4);
  EXPECT_EQ(sim.sched.num_running(), 4);
  for (auto& k : kids) sim.sched.remove(k.get());
  EXPECT_EQ(sim.sched.seats_used(), 1);
  sim.step();
  EXPECT_EQ(b->status, SeqStatus::Running);  // 1 + 4 <= 6
  EXPECT_EQ(sim.sched.seats_used(), 5);
}

// Sequences of several seats in several groups: the seat rule never moves
// seats back and forth (it once did inside one schedule(), forever), and
// everything finishes.
TEST(Scheduler, WideSequencesInManyGroupsNeverPingPong) {
  for (uint32_t seed = 1; seed <= 10; ++seed) {
    std::mt19937 rng(seed);
    SchedulerConfig cfg;
    cfg.max_num_seqs = std::uniform_int_distribution<int64_t>(2, 8)(rng);
    cfg.max_num_batched_tokens = 1 << 20;
    Sim sim(4096, 16, cfg);
    int added = 0;
    int64_t preempted = 0;
    for (int stepno = 0; stepno < 4000; ++stepno) {
      if (added < 80 && rng() % 3 == 0) {
        Sequence* s =
            sim.add(tokens(int64_t(1 + rng() % 10), int32_t(rng() % 1000)), int64_t(1 + rng() % 20), 0, 1 + rng() % 4);
        s->seats = int32_t(1 + rng() % std::min<int64_t>(3, cfg.max_num_seqs));
        ++added;
      }
      auto out = sim.step();
      if (HasFatalFailure()) return;
      preempted += int64_t(out.preempted.size());
      ASSERT_LE(int64_t(out.preempted.size()), cfg.max_num_seqs) << "seed " << seed << " step " << stepno;
      if (added == 80 && sim.sched.num_running() + sim.sched.num_waiting() == 0) break;
    }
    EXPECT_EQ(sim.sched.num_running() + sim.sched.num_waiting(), 0) << "seed " << seed;
    EXPECT_LT(preempted, 200) << "seed " << seed << ": seats thrash between groups";
  }
}

TEST(Scheduler, TwoWideGroupsDoNotSwapSeats) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 2;
  Sim sim(256, 16, cfg);
  Sequence* b = sim.add(tokens(4, 1), 10, 0, /*group=*/2);
  b->seats = 2;
  sim.step();
  Sequence* a = sim.add(tokens(4, 100), 10, 0, /*group=*/1);
  a->seats = 2;
  auto out = sim.step();  // taking b's seats would leave its group with fewer than a's
  EXPECT_TRUE(out.preempted.empty());
  EXPECT_EQ(b->status, SeqStatus::Running);
  EXPECT_EQ(a->status, SeqStatus::Waiting);
}

// Random fan-out groups: with ample blocks and budget, whenever every seat
// is taken and a sequence waits, no group holds more than one seat more
// than the waiting sequence's group; everything finishes.
TEST(Scheduler, PropertySeatsAreSharedBetweenGroups) {
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    std::mt19937 rng(seed);
    SchedulerConfig cfg;
    cfg.max_num_seqs = std::uniform_int_distribution<int64_t>(2, 16)(rng);
    cfg.max_num_batched_tokens = 1 << 20;
    Sim sim(4096, 16, cfg);
    int added = 0;
    for (int stepno = 0; stepno < 5000; ++stepno) {
      if (added < 120 && rng() % 4 == 0) {
        const uint64_t group = 1 + rng() % 5;
        const int fan = rng() % 3 == 0 ? int(rng() % 12) + 1 : 1;
        for (int i = 0; i < fan && added < 120; ++i, ++added)
          sim.add(tokens(int64_t(1 + rng() % 20), int32_t(rng() % 1000)), int64_t(1 + rng() % 30), 0, group);
      }
      sim.step();
      if (HasFatalFailure()) return;
      if (sim.sched.num_running() >= cfg.max_num_seqs && sim.sched.num_waiting() > 0) {
        int64_t most = 0;
        for (const Sequence* r : sim.sched.running()) most = std::max(most, sim.sched.group_running(r->group));
        const Sequence* next = sim.sched.waiting_in_order().front();
        EXPECT_LE(most, sim.sched.group_running(next->group) + 1) << "seed " << seed << " step " << stepno;
      }
      if (added == 120 && sim.sched.num_running() + sim.sched.num_waiting() == 0) break;
    }
    EXPECT_EQ(sim.sched.num_running() + sim.sched.num_waiting(), 0) << "seed " << seed << ": work left (starved?)";
    for (auto& s : sim.seqs) EXPECT_EQ(s->num_tokens(), sim.target[size_t(s->id)]) << "seed " << seed;
  }
}

// Without fan-out (one sequence per group) the schedule is exactly the
// single-queue FCFS/priority schedule: the same chunks, step by step, as
// when every sequence is in one group.
TEST(Scheduler, OneSequencePerGroupSchedulesAsPlainFcfs) {
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    SchedulerConfig cfg;
    cfg.max_num_seqs = 1 + seed % 5;
    cfg.max_num_batched_tokens = 16 + 8 * seed;
    cfg.policy = seed % 2 ? SchedulePolicy::Fcfs : SchedulePolicy::Priority;
    Sim one(24, 4, cfg), own(24, 4, cfg);
    std::mt19937 rng(seed);
    std::vector<std::vector<std::pair<uint64_t, int64_t>>> a, b;
    for (int stepno = 0; stepno < 600; ++stepno) {
      if (stepno < 200 && rng() % 3 == 0) {
        auto p = tokens(int64_t(1 + rng() % 30), int32_t(rng() % 500));
        const int64_t gen = int64_t(1 + rng() % 30);
        const int32_t prio = int32_t(rng() % 3);
        one.add(p, gen, prio, 0);
        own.add(p, gen, prio, 1000 + own.next);
      }
      auto oa = one.step(), ob = own.step();
      if (HasFatalFailure()) return;
      std::vector<std::pair<uint64_t, int64_t>> ca, cb;
      for (auto& c : oa.chunks) ca.push_back({c.seq->id, c.num_tokens});
      for (auto& c : ob.chunks) cb.push_back({c.seq->id, c.num_tokens});
      ASSERT_EQ(ca, cb) << "seed " << seed << " step " << stepno;
      ASSERT_EQ(oa.preempted.size(), ob.preempted.size()) << "seed " << seed << " step " << stepno;
    }
  }
}

}  // namespace
}  // namespace kite
