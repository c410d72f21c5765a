#pragma once
// Runs an Engine on its own thread. Callers on any thread submit requests
// and read each request's outputs from its RequestStream; the engine loop
// steps while there is work and sleeps otherwise.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "engine/engine.h"

namespace kite {

// One request's outputs, in order. Filled by the engine thread.
class RequestStream {
 public:
  explicit RequestStream(std::string id) : id_(std::move(id)) {}
  const std::string& id() const { return id_; }
  // Blocks until the next output; false once the final output was taken.
  bool next(RequestOutput& out);
  // The next output if one is ready.
  bool try_next(RequestOutput& out);
  // Called on the engine thread after each push (e.g. to wake an event
  // loop); set it before outputs can arrive, i.e. right after submit.
  void set_notify(std::function<void()> fn);

  // Engine side.
  void push(RequestOutput out);

 private:
  std::string id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_;
  std::function<void()> notify_;
  bool ended_ = false;  // the final output was pushed
};

// The waiting queue is full for now (the server answers 429 with
// Retry-After). Source "request", field "queue".
class QueueFullError : public Error {
 public:
  QueueFullError(std::string message, int retry_after_s)
      : Error("request", "queue", std::move(message)), retry_after_s_(retry_after_s) {}
  int retry_after_s() const { return retry_after_s_; }  // a suggestion, 1..60 seconds

 private:
  int retry_after_s_;
};

// One prompt of a submission (its id names its stream).
struct Submission {
  std::string id;
  std::vector<int32_t> prompt;
};

class AsyncEngine {
 public:
  // Takes the engine and starts the loop thread.
  explicit AsyncEngine(std::unique_ptr<Engine> engine);
  ~AsyncEngine();  // shutdown()

  // Validates now (throws kite::Error for a request that can never run,
  // QueueFullError when the waiting queue is full for now), then queues it.
  std::shared_ptr<RequestStream> submit(const std::string& id, std::vector<int32_t> prompt,
                                        const GenerationParams& params);
  // Several prompts of one client call, queued together as one request
  // group (seats and prefill are shared fairly between groups) or not at
  // all. The queue limit counts sequences (prompts x n) that would wait
  // for a seat: with max_waiting W and max_num_seqs S, a call of more than
  // S + W sequences can never be queued (kite::Error, field "n"); one that
  // would take the sequences waiting for a seat past W gets QueueFullError.
  std::vector<std::shared_ptr<RequestStream>> submit_group(std::vector<Submission> prompts,
                                                           const GenerationParams& params);
  // Ends a request; its stream gets a final output with finish reason Abort.
  void abort(const std::string& id);
  // Aborts everything left and joins the loop.
  void shutdown();
  // Waits until no request is in flight.
  void wait_idle();

  EngineStats stats() const;                         // as of the last step
  const Engine& engine() const { return *engine_; }  // immutable parts only (config, limits)
  // Most sequences waiting for a seat (beyond max_num_seqs running); 0 = unlimited.
  void set_max_waiting(int64_t n) { max_waiting_ = n; }

 private:
  void loop();

  std::unique_ptr<Engine> engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Pending {
    std::string id;
    std::vector<int32_t> prompt;
    GenerationParams params;
    uint64_t group = 0;
  };
  // Seconds until `excess` more sequences are likely to have finished, from
  // the recent finish rate (1 when unknown), within 1..60. Under mu_.
  int retry_after_locked(int64_t excess) const;
  std::vector<Pending> adds_;
  std::vector<std::string> aborts_;
  std::unordered_map<std::string, std::shared_ptr<RequestStream>> streams_;
  EngineStats stats_;
  int64_t max_waiting_ = 0;      // 0 = unlimited
  int64_t pending_seqs_ = 0;     // sequences (prompts x n) in adds_
  int64_t in_transit_seqs_ = 0;  // sequences taken from adds_ that stats_ does not count yet
  uint64_t next_group_ = 1;
  std::deque<std::pair<double, int64_t>> finish_history_;  // (seconds, requests finished): the last ~10 s
  bool stop_ = false;
  std::condition_variable idle_cv_;
  std::thread thread_;
};

}  // namespace kite
