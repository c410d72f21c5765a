#pragma once
// A sequence as the scheduler sees it: its tokens, how many of them have
// K/V in the cache, and the blocks holding them. One request has one
// sequence per parallel sample (n); the engine keeps the rest of a
// request's state (engine.cpp).
#include <cstdint>
#include <vector>

#include "engine/block_manager.h"

namespace kite {

struct Request;  // engine-internal

enum class SeqStatus { Waiting, Running, Finished };

struct Sequence {
  uint64_t id = 0;
  int32_t priority = 0;         // lower runs sooner (priority policy)
  uint64_t arrival = 0;         // arrival order: ties of priority, and which sequence is newest
  uint64_t group = 0;           // the client request it belongs to (a fan-out's prompts and samples share
                                // one): seats and prefill are shared fairly between groups
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t num_prompt_tokens = 0;
  int64_t num_computed = 0;  // leading tokens whose K/V are in the cache
  BlockTable blocks;
  bool use_prefix_cache = true;  // false when prompt logprobs need every prompt position computed
  int32_t seats = 1;             // batch seats it holds when running: n for a request's first sequence until its
                                 // samples fork (each fork takes one of them), else 1
  SeqStatus status = SeqStatus::Waiting;
  int64_t num_preemptions = 0;

  Request* request = nullptr;  // owner (null in scheduler tests)
  int32_t index = 0;           // which sample of the request

  int64_t num_tokens() const { return int64_t(tokens.size()); }
  int64_t num_generated() const { return num_tokens() - num_prompt_tokens; }
  // Tokens still to run before the next token can be sampled.
  int64_t remaining() const { return num_tokens() - num_computed; }
};

}  // namespace kite
