#pragma once
// The step scheduler (plain host C++): continuous batching under a token
// budget, decodes first, then chunked prefill; FCFS or priority order;
// preemption by recompute when KV blocks run out. Invariants are stated in
// docs/design/engine.md.
#include <cstdint>
#include <deque>
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
  // from it; it already shares the parent's blocks).
  void add_running(Sequence* child);
  // Removes a sequence from whichever queue holds it and frees its blocks
  // (finish or abort); status becomes Finished.
  void remove(Sequence* seq);

  // Picks the next step's batch and allocates its KV slots.
  SchedulerOutput schedule();
  // After the forward pass: advances num_computed of every scheduled
  // sequence and offers newly full blocks to the prefix cache.
  void finish_step(const SchedulerOutput& out);

  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const std::vector<Sequence*>& running() const { return running_; }
  const std::deque<Sequence*>& waiting() const { return waiting_; }

 private:
  bool before(const Sequence* a, const Sequence* b) const;  // queue order
  void preempt(Sequence* seq, SchedulerOutput& out);
  void insert_waiting(Sequence* seq);
  void insert_running(Sequence* seq);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::vector<Sequence*> running_;  // queue order; the last is preempted first
  std::deque<Sequence*> waiting_;   // queue order
  int64_t num_preemptions_ = 0;
};

}  // namespace kite
