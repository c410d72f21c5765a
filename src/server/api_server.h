#pragma once
// Kite's OpenAI-compatible API server: routes, authentication, the glue
// between HTTP coroutines and the AsyncEngine, graceful shutdown.
//
//   POST /v1/completions, /v1/chat/completions   (stream true/false)
//   GET  /v1/models, /v1/models/{id}, /health, /metrics, /version
//   POST /tokenize, /detokenize                  (vLLM's shapes)
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/async_engine.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"

namespace kite::server {

struct ServerOptions {
  HttpOptions http;
  std::string api_key;  // empty: no authentication; else every route but /health and /metrics needs
                        // "Authorization: Bearer <key>"
  // Most sequences (prompts x n) one completion request may ask for; more
  // is a 400 naming the parameter. 0 = no limit.
  int64_t max_seqs_per_request = 256;
  int io_threads = 1;
  std::chrono::milliseconds shutdown_timeout{30000};  // in-flight requests get this long to finish
  bool log_requests = false;                          // one line per API request on stderr
  // The serving GPU's cumulative energy in joules (NVML), for /metrics;
  // unset or nullopt: not exported.
  std::function<std::optional<double>()> gpu_energy_joules;
};

class Server {
 public:
  // Binds at once (kite::Error when the address is taken). The engine and
  // everything ModelInfo points to must outlive the server.
  Server(AsyncEngine& engine, ModelInfo model, ServerOptions options);
  ~Server();
  uint16_t port() const;
  // Starts the io threads; returns at once.
  void start();
  // Stops accepting, lets requests in flight finish up to `drain`, aborts
  // the rest (their streams end with finish reason "abort"), then stops the
  // io threads. Idempotent.
  void shutdown(std::chrono::milliseconds drain);
  // start(), then blocks until SIGINT or SIGTERM; then shutdown() with the
  // configured timeout (a second signal cuts the drain short).
  void run_until_signal();
  ServerMetrics& metrics() { return *metrics_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<ServerMetrics> metrics_;
};

// Compares in time that depends only on the length of `expected`.
bool constant_time_equal(std::string_view given, std::string_view expected);

}  // namespace kite::server
