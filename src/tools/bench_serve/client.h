#pragma once
// The load generator of `kite bench serve`: streams each prompt to an
// OpenAI-compatible server (Kite, vLLM, llama-server ...) over HTTP/1.1,
// paced by a request rate (Poisson, or gamma with burstiness) under an
// optional concurrency cap, and times every streamed chunk. One thread runs
// every connection (Boost.Asio coroutines), so timestamps are not skewed by
// thread scheduling.
#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tools/bench_serve/dataset.h"

namespace kite::bench {

struct Endpoint {
  std::string host = "127.0.0.1";
  std::string port = "8000";
  std::string path = "/v1/completions";  // the base URL's path prefix + --endpoint
  bool chat = false;                     // /chat/completions: messages instead of prompt
};

// "http://host:port[/prefix]" + endpoint ("/v1/completions"). kite::Error on
// anything else (https is not supported).
Endpoint parse_endpoint(const std::string& base_url, const std::string& endpoint);

struct ClientOptions {
  Endpoint endpoint;
  std::string model;
  std::string api_key;          // sent as "Authorization: Bearer <key>" when set
  bool ignore_eos = false;      // Kite's and vLLM's extension
  nlohmann::json sampling;      // merged into every body (temperature, top_p ...)
  double timeout_s = 6 * 3600;  // per request
};

struct RunOptions {
  double request_rate = std::numeric_limits<double>::infinity();  // requests per second; inf: all at once
  double burstiness = 1.0;                                        // gamma shape of the gaps (1 = Poisson)
  int64_t max_concurrency = 0;                                    // 0: no cap
  uint64_t seed = 0;                                              // the gaps' RNG
  std::function<void(size_t done, size_t total)> progress;        // after each request
};

struct RequestResult {
  bool success = false;
  std::string error;          // why it failed (HTTP status and body, or the network error)
  double start = 0;           // seconds since the run started, when the request was sent
  double ttft = 0;            // seconds to the first chunk with text
  double latency = 0;         // seconds to the end of the stream
  std::vector<double> itl;    // seconds between chunks with text
  int64_t prompt_len = 0;     // from the dataset
  int64_t output_tokens = 0;  // the server's usage.completion_tokens (else counted chunks)
  bool usage_reported = false;
  int64_t usage_prompt_tokens = 0;
  std::string text;  // the generated text
};

// The send time (seconds after the start) of each of `n` requests.
std::vector<double> arrival_times(size_t n, double request_rate, double burstiness, uint64_t seed);

// Runs every prompt; returns one result per prompt (in prompt order) and
// sets `duration` to the seconds from the first send to the last answer.
std::vector<RequestResult> run_requests(const ClientOptions& client, const RunOptions& run,
                                        const std::vector<BenchPrompt>& prompts, double& duration);

// GET on the server's root (e.g. "/metrics"); empty on any failure.
std::string http_get(const Endpoint& at, const std::string& path, const std::string& api_key);

// The server's cumulative GPU energy (kite:gpu_energy_joules_total on
// /metrics), or NaN when it reports none.
double energy_joules(const Endpoint& at, const std::string& api_key);

}  // namespace kite::bench
