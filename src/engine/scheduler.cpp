#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace kite {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& blocks) : config_(config), blocks_(blocks) {
  if (config.max_num_seqs < 1)
    fail("scheduler", "max_num_seqs", "{} is invalid; expected at least 1", config.max_num_seqs);
  if (config.max_num_batched_tokens < 1)
    fail("scheduler", "max_num_batched_tokens", "{} is invalid; expected at least 1", config.max_num_batched_tokens);
}

bool Scheduler::before(const Sequence* a, const Sequence* b) const {
  if (config_.policy == SchedulePolicy::Priority && a->priority != b->priority) return a->priority < b->priority;
  if (a->arrival != b->arrival) return a->arrival < b->arrival;
  return a->id < b->id;
}

void Scheduler::insert_waiting(Sequence* seq) {
  auto at = std::upper_bound(waiting_.begin(), waiting_.end(), seq,
                             [this](const Sequence* a, const Sequence* b) { return before(a, b); });
  waiting_.insert(at, seq);
}

void Scheduler::insert_running(Sequence* seq) {
  auto at = std::upper_bound(running_.begin(), running_.end(), seq,
                             [this](const Sequence* a, const Sequence* b) { return before(a, b); });
  running_.insert(at, seq);
}

void Scheduler::add(Sequence* seq) {
  KITE_CHECK(seq->blocks.blocks.empty() && seq->num_computed == 0, "sequence {} queued holding blocks", seq->id);
  seq->status = SeqStatus::Waiting;
  insert_waiting(seq);
}

void Scheduler::add_running(Sequence* child) {
  child->status = SeqStatus::Running;
  insert_running(child);
}

void Scheduler::remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  blocks_.free(seq->blocks);
  seq->num_computed = 0;
  seq->status = SeqStatus::Finished;
}

void Scheduler::preempt(Sequence* seq, SchedulerOutput& out) {
  // Undo what this step already gave it: its chunk and copies into its blocks.
  auto chunk = std::find_if(out.chunks.begin(), out.chunks.end(), [&](const auto& c) { return c.seq == seq; });
  if (chunk != out.chunks.end()) {
    out.num_tokens -= chunk->num_tokens;
    out.chunks.erase(chunk);
  }
  const auto& mine = seq->blocks.blocks;
  std::erase_if(out.copies,
                [&](const BlockCopy& c) { return std::find(mine.begin(), mine.end(), c.dst) != mine.end(); });
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  blocks_.free(seq->blocks);
  seq->num_computed = 0;
  ++seq->num_preemptions;
  ++num_preemptions_;
  seq->status = SeqStatus::Waiting;
  insert_waiting(seq);
  out.preempted.push_back(seq);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  const int64_t max_tokens = config_.max_num_batched_tokens;

  // 1. Running sequences: decodes first, then unfinished prefills, each in queue order.
  std::vector<Sequence*> order;
  order.reserve(running_.size());
  for (Sequence* s : running_)
    if (s->remaining() == 1) order.push_back(s);
  for (Sequence* s : running_)
    if (s->remaining() != 1) order.push_back(s);
  for (Sequence* seq : order) {
    if (seq->status != SeqStatus::Running) continue;  // preempted earlier in this loop
    if (out.num_tokens >= max_tokens || int64_t(out.chunks.size()) >= config_.max_num_seqs) break;
    const int64_t n = std::min(seq->remaining(), max_tokens - out.num_tokens);
    if (n <= 0) continue;
    for (;;) {
      if (blocks_.allocate_slots(seq->blocks, seq->num_computed, seq->num_computed + n, out.copies)) {
        out.chunks.push_back({seq, n});
        out.num_tokens += n;
        break;
      }
      // Out of blocks: preempt the newest (lowest-priority) running sequence.
      Sequence* victim = running_.back();
      preempt(victim, out);
      if (victim == seq) break;
    }
  }

  // 2. Waiting sequences, in queue order, while nothing had to be preempted.
  while (out.preempted.empty() && !waiting_.empty() && out.num_tokens < max_tokens &&
         int64_t(running_.size()) < config_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    const bool cache = seq->use_prefix_cache && blocks_.prefix_caching();
    const int64_t hit = cache ? blocks_.cached_prefix_tokens(seq->tokens) : 0;
    const int64_t todo = seq->num_tokens() - hit;
    const int64_t n = std::min(todo, max_tokens - out.num_tokens);
    if (n < todo && !config_.enable_chunked_prefill) break;
    // Conservative: as if every hit block had to leave the free pool too.
    if (blocks_.blocks_for(hit + n) > blocks_.num_free_blocks()) break;
    if (cache) seq->num_computed = blocks_.acquire_prefix(seq->blocks, seq->tokens);
    KITE_CHECK(seq->num_computed == hit, "prefix hit changed: {} != {}", seq->num_computed, hit);
    const bool ok = blocks_.allocate_slots(seq->blocks, hit, hit + n, out.copies);
    KITE_CHECK(ok, "allocation of {} slots failed after the free-block check", hit + n);
    waiting_.pop_front();
    seq->status = SeqStatus::Running;
    insert_running(seq);
    out.chunks.push_back({seq, n});
    out.num_tokens += n;
  }
  return out;
}

void Scheduler::finish_step(const SchedulerOutput& out) {
  for (const ScheduledChunk& c : out.chunks) {
    Sequence* seq = c.seq;
    seq->num_computed += c.num_tokens;
    KITE_CHECK(seq->num_computed <= seq->num_tokens(), "sequence {} computed past its tokens", seq->id);
    if (blocks_.prefix_caching()) blocks_.cache_full_blocks(seq->blocks, seq->tokens, seq->num_computed);
  }
}

}  // namespace kite
