#pragma once
// Prometheus metrics of the API server, under vLLM's metric names so that
// dashboards built for vLLM read Kite unchanged. Gauges and token counters
// come from the engine's stats at scrape time; latency histograms are fed
// by each finished request.
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/request.h"

namespace kite::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, increasing; +Inf is implied
  void observe(double v);
  // Appends the _bucket/_sum/_count lines of `name` with `labels` ("k=\"v\"").
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = over the top bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(std::string model_name);

  // A request's final output (any finish reason); thread-safe.
  void record_finished(const RequestMetrics& m, FinishReason reason);
  // Requests rejected before reaching the engine, by HTTP status.
  void record_rejected(int status);
  // The Prometheus text exposition (version 0.0.4).
  // gpu_energy_joules: the GPU's cumulative energy counter, exported as
  // kite:gpu_energy_joules_total when given (kite bench serve's power figures).
  std::string render(const EngineStats& stats, int64_t kv_cache_tokens,
                     std::optional<double> gpu_energy_joules = std::nullopt) const;

 private:
  std::string labels_;  // model_name="..."
  mutable std::mutex mu_;
  Histogram ttft_, itl_, e2e_, queue_, prompt_len_, gen_len_;
  std::map<std::string, uint64_t> finished_;  // by finish reason
  std::map<int, uint64_t> rejected_;          // by HTTP status
};

// Escapes a Prometheus label value (backslash, quote, newline).
std::string prometheus_escape(const std::string& s);

}  // namespace kite::server
