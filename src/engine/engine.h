#pragma once
// The serving engine: requests in, one batched forward pass per step(),
// new tokens out. Owns the paged KV cache, the block manager and the
// scheduler; samples with one RNG stream per sample; detokenizes for stop
// strings. Single-threaded: AsyncEngine (async_engine.h) runs it on its own
// thread for the server and the CLI.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/block_manager.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace kite {

struct Request;      // a request in flight (engine.cpp)
struct SampleState;  // one parallel sample of it (engine.cpp)

struct EngineConfig {
  int64_t block_size = 16;                   // token slots per KV block
  int64_t num_blocks = 0;                    // KV pool size; 0 = kv_cache_memory / block bytes
  size_t kv_cache_memory = size_t(1) << 30;  // bytes for the KV pool when num_blocks is 0
  int64_t max_model_len = 0;                 // 0 = the model's max_position_embeddings
  bool enable_prefix_caching = true;
  bool enforce_eager = false;  // no CUDA graphs for decode steps
  SchedulerConfig scheduler;
  std::vector<int32_t> eos_ids;  // the model's end-of-sequence ids (generation_config.json)
};

struct EngineStats {
  int64_t num_running = 0;
  int64_t num_waiting = 0;
  int64_t num_preemptions = 0;  // since start
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  double kv_usage() const { return kv_blocks_total ? double(kv_blocks_used) / double(kv_blocks_total) : 0.0; }
  PrefixCacheStats prefix_cache;
  int64_t prompt_tokens = 0;      // prompt tokens of admitted requests, since start
  int64_t generation_tokens = 0;  // tokens generated, since start
  int64_t steps = 0;
  int64_t requests_finished = 0;
  double schedule_seconds = 0;  // host time spent in the scheduler, since start
  double forward_seconds = 0;   // time spent in forward passes (incl. copies), since start
};

// The KV-cache bytes that fit on the model's device when the process may
// use `utilization` of the device's memory: that share of the total, less
// what is in use now (weights, the runtime), less the model's activations
// for max_num_batched_tokens and its decode-graph buffers. `report` (if
// given) receives one line with the figures. Throws kite::Error when
// nothing is left for the cache. CPU models: returns config.kv_cache_memory.
size_t plan_kv_cache_memory(Model& model, const EngineConfig& config, double utilization, std::string* report);

class Engine {
 public:
  // `tokenizer` may be null: then stop strings are refused and outputs carry
  // no text. Throws kite::Error on a bad configuration.
  Engine(Model& model, const Tokenizer* tokenizer, const EngineConfig& config);
  ~Engine();

  // Checks a request against the engine's limits without queueing it
  // (thread-safe: reads only the configuration). Throws kite::Error with
  // source "request" when it can never run: empty prompt, ids outside the
  // vocabulary, bad parameters, prompt + max_tokens over max_model_len, or
  // more KV blocks than the whole pool.
  void validate(std::span<const int32_t> prompt, const GenerationParams& params) const;
  // Validates and queues. Throws kite::Error as validate, or for a duplicate id.
  // `group` ties the requests of one client call together (a fan-out's
  // prompts): the scheduler shares seats and prefill fairly between groups,
  // not between requests. Without one the request is a group of its own.
  // Caller-chosen groups must be below kOwnGroups.
  static constexpr uint64_t kOwnGroups = uint64_t(1) << 63;
  void add_request(const std::string& id, std::vector<int32_t> prompt, const GenerationParams& params,
                   std::optional<uint64_t> group = std::nullopt);
  // Ends a request; its final output (finish reason Abort) comes from the
  // next step(). False when the id is unknown or already finished.
  bool abort(const std::string& id);
  // Runs one step: schedule, one forward pass, sampling, stop checks.
  // Returns the news of every request that changed.
  std::vector<RequestOutput> step();
  bool has_work() const;

  EngineStats stats() const;
  const EngineConfig& config() const { return config_; }
  int64_t max_model_len() const { return config_.max_model_len; }
  int64_t num_blocks() const { return blocks_.num_blocks(); }
  const BlockManager& block_manager() const { return blocks_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  struct StepRows;

  static EngineConfig resolve(const Model& model, EngineConfig config);
  BatchInput build_batch(const SchedulerOutput& out, std::vector<StepRows>& rows) const;
  // The step's sampling metadata, one row per logit row (draws the sampled
  // rows' uniforms from their samples' RNGs).
  ops::SampleBatch build_samples(const SchedulerOutput& out, const std::vector<StepRows>& rows);
  // picked: the step's results, one per logit row.
  void process_chunk(const ScheduledChunk& chunk, const StepRows& rows, const std::vector<ops::SampledToken>& picked,
                     double now, std::vector<Request*>& touched);
  void sample_token(Request& r, Sequence& seq, const ops::SampledToken& picked, double now);
  void append_text(Request& r, SampleState& s, Sequence& seq, bool final);
  void finish_sample(Request& r, Sequence& seq, FinishReason why);
  RequestOutput collect(Request& r, bool final);

  Model& model_;
  const Tokenizer* tokenizer_;
  EngineConfig config_;
  PagedKvCache cache_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<std::string, std::unique_ptr<Request>> requests_;
  std::vector<Request*> aborted_;  // finished by abort(), reported by the next step
  uint64_t next_arrival_ = 0;
  uint64_t next_seq_id_ = 0;
  uint64_t next_own_group_ = kOwnGroups;
  EngineStats counters_;
};

}  // namespace kite
