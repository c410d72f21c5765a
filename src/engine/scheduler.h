#pragma once
// The step scheduler (plain host C++): continuous batching under a token
// budget, decodes first, then chunked prefill; FCFS or priority order, fair
// between request groups (a fan-out request cannot hold every seat while
// another request waits); preemption by recompute when KV blocks run out.
// Invariants are stated in docs/design/engine.md.
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace kite {

enum class SchedulePolicy { Fcfs, Priority };

struct SchedulerConfig {
  int64_t max_num_seqs = 256;             // sequences in one batch
  int64_t max_num_batched_tokens = 2048;  // tokens in one batch
  bool enable_chunked_prefill = true;     // split a long prompt across steps
  SchedulePolicy policy = SchedulePolicy::Fcfs;
};

// Sequence `seq` runs tokens [seq->num_computed, seq->num_computed + num_tokens).
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t num_tokens = 0;
  // True when the chunk reaches the end of the sequence's tokens, so the
  // step samples its next token.
  bool samples() const { return seq->num_computed + num_tokens == seq->num_tokens(); }
};

struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;  // decodes first, then prefill chunks
  std::vector<BlockCopy> copies;       // copy-on-write, done before the forward pass
  std::vector<Sequence*> preempted;    // preempted (back to waiting) during this schedule
  int64_t num_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& blocks);

  const SchedulerConfig& config() const { return config_; }
  // Queues a sequence (status Waiting, no blocks).
  void add(Sequence* seq);
  // Queues `child` to run right beside `parent` (a parallel sample forked
  // from it; it already shares the parent's blocks). The child takes one of
  // the seats the parent reserved for its samples (parent->seats > 1).
  void add_running(Sequence* child, Sequence* parent);
  // Removes a sequence from whichever queue holds it and frees its blocks
  // (finish or abort); status becomes Finished.
  void remove(Sequence* seq);

  // Picks the next step's batch and allocates its KV slots.
  SchedulerOutput schedule();
  // After the forward pass: advances num_computed of every scheduled
  // sequence and offers newly full blocks to the prefix cache.
  void finish_step(const SchedulerOutput& out);

  int64_t num_running() const { return int64_t(running_.size()); }
  // Seats held by running sequences (a request's first sequence holds n
  // until its samples fork); admission keeps this within max_num_seqs.
  int64_t seats_used() const { return seats_used_; }
  int64_t num_waiting() const { return num_waiting_; }
  int64_t num_preemptions() const { return num_preemptions_; }
  const std::vector<Sequence*>& running() const { return running_; }
  // Seats held by one request group's running sequences.
  int64_t group_running(uint64_t group) const;
  // The waiting sequences in the order admission would take them if
  // nothing changed (for tests and diagnostics; O(waiting x groups)).
  std::vector<Sequence*> waiting_in_order() const;

 private:
  struct Group {
    int64_t running = 0;            // seats held
    std::deque<Sequence*> waiting;  // queue order
  };
  bool before(const Sequence* a, const Sequence* b) const;  // queue order
  // Admission order: priority (priority policy), then the group holding
  // fewer running sequences, then queue order.
  bool admits_before(const Sequence* a, int64_t a_running, const Sequence* b, int64_t b_running) const;
  Sequence* next_waiting() const;  // the next to admit, or null
  // When the seats `cand` needs are taken: the newest running sequence of
  // the group holding the most seats, if that group, without it, still
  // holds at least as many seats as `cand`'s group with `cand` (and, under
  // the priority policy, it is not more urgent than `cand`); null when none.
  Sequence* seat_victim(const Sequence* cand) const;
  // When KV blocks run out: the newest running sequence of the group
  // holding the most seats (priority policy: the least urgent, newest).
  Sequence* block_victim() const;
  void preempt(Sequence* seq, SchedulerOutput& out);
  void insert_waiting(Sequence* seq);
  void erase_waiting(Sequence* seq);
  void insert_running(Sequence* seq);
  void erase_running(Sequence* seq);
  void drop_group_if_idle(uint64_t group);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::vector<Sequence*> running_;  // queue order
  std::unordered_map<uint64_t, Group> groups_;
  int64_t num_waiting_ = 0;
  int64_t seats_used_ = 0;
  int64_t num_preemptions_ = 0;
};

}  // namespace kite
