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

bool Scheduler::admits_before(const Sequence* a, int64_t a_running, const Sequence* b, int64_t b_running) const {
  if (config_.policy == SchedulePolicy::Priority && a->priority != b->priority) return a->priority < b->priority;
  if (a_running != b_running) return a_running < b_running;
  return before(a, b);
}

int64_t Scheduler::group_running(uint64_t group) const {
  auto it = groups_.find(group);
  return it == groups_.end() ? 0 : it->second.running;
}

void Scheduler::insert_waiting(Sequence* seq) {
  auto& q = groups_[seq->group].waiting;
  auto at =
      std::upper_bound(q.begin(), q.end(), seq, [this](const Sequence* a, const Sequence* b) { return before(a, b); });
  q.insert(at, seq);
  ++num_waiting_;
}

void Scheduler::erase_waiting(Sequence* seq) {
  auto g = groups_.find(seq->group);
  if (g == groups_.end()) return;
  auto& q = g->second.waiting;
  if (auto it = std::find(q.begin(), q.end(), seq); it != q.end()) {
    q.erase(it);
    --num_waiting_;
  }
  drop_group_if_idle(seq->group);
}

void Scheduler::insert_running(Sequence* seq) {
  auto at = std::upper_bound(running_.begin(), running_.end(), seq,
                             [this](const Sequence* a, const Sequence* b) { return before(a, b); });
  running_.insert(at, seq);
  groups_[seq->group].running += seq->seats;
  seats_used_ += seq->seats;
}

void Scheduler::erase_running(Sequence* seq) {
  auto it = std::find(running_.begin(), running_.end(), seq);
  if (it == running_.end()) return;
  running_.erase(it);
  groups_[seq->group].running -= seq->seats;
  seats_used_ -= seq->seats;
  drop_group_if_idle(seq->group);
}

void Scheduler::drop_group_if_idle(uint64_t group) {
  auto g = groups_.find(group);
  if (g != groups_.end() && g->second.running == 0 && g->second.waiting.empty()) groups_.erase(g);
}

Sequence* Scheduler::next_waiting() const {
  Sequence* best = nullptr;
  int64_t best_running = 0;
  for (const auto& [id, g] : groups_) {
    if (g.waiting.empty()) continue;
    Sequence* head = g.waiting.front();
    if (!best || admits_before(head, g.running, best, best_running)) {
      best = head;
      best_running = g.running;
    }
  }
  return best;
}

std::vector<Sequence*> Scheduler::waiting_in_order() const {
  std::unordered_map<uint64_t, size_t> taken;  // per group: how many of its waiting are already listed
  std::unordered_map<uint64_t, int64_t> running;
  for (const auto& [id, g] : groups_) running[id] = g.running;
  std::vector<Sequence*> order;
  order.reserve(size_t(num_waiting_));
  while (int64_t(order.size()) < num_waiting_) {
    Sequence* best = nullptr;
    for (const auto& [id, g] : groups_) {
      if (taken[id] >= g.waiting.size()) continue;
      Sequence* head = g.waiting[taken[id]];
      if (!best || admits_before(head, running[id], best, running[best->group])) best = head;
    }
    order.push_back(best);
    ++taken[best->group];
    ++running[best->group];
  }
  return order;
}

Sequence* Scheduler::seat_victim(const Sequence* cand) const {
  const int64_t mine = group_running(cand->group);
  Sequence* victim = nullptr;
  int64_t victim_running = 0;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {  // newest first
    Sequence* s = *it;
    const int64_t r = group_running(s->group);
    // After the move its group must still hold at least as many seats as
    // cand's (so the move never reverses, and sum of squares of the group
    // seats falls).
    if (r - s->seats < mine + cand->seats) continue;
    if (config_.policy == SchedulePolicy::Priority && s->priority < cand->priority) continue;
    if (!victim || r > victim_running) {
      victim = s;
      victim_running = r;
    }
  }
  return victim;
}

Sequence* Scheduler::block_victim() const {
  if (config_.policy == SchedulePolicy::Priority) return running_.back();
  Sequence* victim = nullptr;
  int64_t victim_running = 0;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {  // newest first: ties go to the newest
    const int64_t r = group_running((*it)->group);
    if (!victim || r > victim_running) {
      victim = *it;
      victim_running = r;
    }
  }
  return victim;
}

void Scheduler::add(Sequence* seq) {
  KITE_CHECK(seq->blocks.blocks.empty() && seq->num_computed == 0, "sequence {} queued holding blocks", seq->id);
  seq->status = SeqStatus::Waiting;
  insert_waiting(seq);
}

void Scheduler::add_running(Sequence* child, Sequence* parent) {
  child->status = SeqStatus::Running;
  child->seats = 1;
  if (parent && parent->seats > 1 && parent->status == SeqStatus::Running) {
    // The child takes one of the seats its parent reserved.
    --parent->seats;
    --groups_[parent->group].running;
    --seats_used_;
  }
  insert_running(child);
}

void Scheduler::remove(Sequence* seq) {
  erase_running(seq);
  erase_waiting(seq);
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
  erase_running(seq);
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

  // 1. Running sequences: decodes first in queue order, then unfinished
  // prefills round-robin across groups (each group's first, then each
  // group's second, ...; queue order within a round).
  std::vector<Sequence*> order;
  order.reserve(running_.size());
  for (Sequence* s : running_)
    if (s->remaining() == 1) order.push_back(s);
  std::unordered_map<uint64_t, int64_t> round;  // per group: its prefills listed so far
  std::vector<std::pair<int64_t, Sequence*>> prefills;
  for (Sequence* s : running_)
    if (s->remaining() != 1) prefills.push_back({round[s->group]++, s});
  std::stable_sort(prefills.begin(), prefills.end(), [this](const auto& a, const auto& b) {
    if (config_.policy == SchedulePolicy::Priority && a.second->priority != b.second->priority)
      return a.second->priority < b.second->priority;
    return a.first < b.first;
  });
  for (auto& [r, s] : prefills) order.push_back(s);
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
      // Out of blocks: preempt the newest sequence of the group holding the
      // most seats (priority policy: the least urgent, newest).
      Sequence* victim = block_victim();
      preempt(victim, out);
      if (victim == seq) break;
    }
  }

  // 2. Waiting sequences in admission order (the group holding the fewest
  // seats first, then queue order), while no sequence had to give up its
  // blocks. With every seat taken, a group holding two or more seats more
  // than the next sequence's group gives up its newest one.
  const bool out_of_blocks = !out.preempted.empty();
  while (!out_of_blocks && num_waiting_ > 0 && out.num_tokens < max_tokens) {
    Sequence* seq = next_waiting();
    // A sequence that gave its seat up in this step waits for the next one
    // (no ping-pong inside one schedule; admission then ends here).
    if (std::find(out.preempted.begin(), out.preempted.end(), seq) != out.preempted.end()) break;
    // Its seats (n for a request that will fork its samples); a sequence
    // wider than every seat runs alone.
    bool seated = true;
    while (seats_used_ > 0 && seats_used_ + seq->seats > config_.max_num_seqs) {
      Sequence* victim = seat_victim(seq);
      if (!victim) {
        seated = false;
        break;
      }
      preempt(victim, out);
    }
    if (!seated) break;
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
    erase_waiting(seq);
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
