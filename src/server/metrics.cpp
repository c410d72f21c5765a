#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace kite::server {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  if (!std::isfinite(v)) return;
  size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i]++;
  sum_ += v;
  count_++;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, bounds_[i], cum);
  }
  out += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels, count_);
  out += fmt::format("{}_sum{{{}}} {}\n", name, labels, sum_);
  out += fmt::format("{}_count{{{}}} {}\n", name, labels, count_);
}

std::string prometheus_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '\\' || c == '"') r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r;
}

namespace {
// Latency buckets in seconds: roughly 1-2.5-5 steps from 1 ms to 10 minutes.
std::vector<double> latency_buckets(double lo, double hi) {
  std::vector<double> b;
  for (double decade = lo; decade <= hi * 1.0001; decade *= 10)
    for (double m : {1.0, 2.5, 5.0})
      if (decade * m <= hi * 1.0001) b.push_back(decade * m);
  return b;
}
std::vector<double> token_buckets() {
  std::vector<double> b;
  for (double v = 1; v <= 1 << 20; v *= 2) b.push_back(v);
  return b;
}
}  // namespace

ServerMetrics::ServerMetrics(std::string model_name)
    : labels_("model_name=\"" + prometheus_escape(model_name) + "\""),
      ttft_(latency_buckets(0.001, 600)),
      itl_(latency_buckets(0.001, 100)),
      e2e_(latency_buckets(0.01, 3600)),
      queue_(latency_buckets(0.001, 3600)),
      prompt_len_(token_buckets()),
      gen_len_(token_buckets()) {}

void ServerMetrics::record_finished(const RequestMetrics& m, FinishReason reason) {
  std::lock_guard lock(mu_);
  if (m.first_token > 0) ttft_.observe(m.first_token - m.arrival);
  for (double d : m.inter_token) itl_.observe(d);
  if (m.finished > 0) e2e_.observe(m.finished - m.arrival);
  if (m.first_scheduled > 0) queue_.observe(m.first_scheduled - m.arrival);
  prompt_len_.observe(double(m.prompt_tokens));
  gen_len_.observe(double(m.generated_tokens));
  finished_[finish_reason_name(reason)]++;
}

void ServerMetrics::record_rejected(int status) {
  std::lock_guard lock(mu_);
  rejected_[status]++;
}

std::string ServerMetrics::render(const EngineStats& st, int64_t kv_cache_tokens,
                                  std::optional<double> gpu_energy_joules) const {
  std::string o;
  auto gauge = [&](const char* name, const char* help, double v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{}{{{}}} {}\n", name, help, name, name, labels_, v);
  };
  auto counter = [&](const char* name, const char* help, double v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} counter\n{}{{{}}} {}\n", name, help, name, name, labels_, v);
  };
  gauge("vllm:num_requests_running", "Requests in the running batch.", double(st.num_running));
  gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", double(st.num_waiting));
  gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", st.kv_usage());
  gauge("vllm:gpu_cache_usage_perc", "Same as vllm:kv_cache_usage_perc (older name).", st.kv_usage());
  gauge("kite:kv_cache_blocks_used", "KV-cache blocks in use.", double(st.kv_blocks_used));
  gauge("kite:kv_cache_blocks_total", "KV-cache blocks in the pool.", double(st.kv_blocks_total));
  gauge("kite:kv_cache_tokens_total", "KV-cache capacity in tokens.", double(kv_cache_tokens));
  counter("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
          double(st.prefix_cache.queried_tokens));
  counter("vllm:prefix_cache_hits_total", "Prompt tokens served from the prefix cache.",
          double(st.prefix_cache.hit_tokens));
  gauge("kite:prefix_cache_hit_rate", "Prefix-cache hits / queries since start.", st.prefix_cache.hit_rate());
  counter("vllm:num_preemptions_total", "Requests preempted (KV blocks reclaimed, recomputed later).",
          double(st.num_preemptions));
  counter("vllm:prompt_tokens_total", "Prompt tokens processed.", double(st.prompt_tokens));
  counter("vllm:generation_tokens_total", "Tokens generated.", double(st.generation_tokens));
  counter("kite:engine_steps_total", "Engine steps (one batched forward pass each).", double(st.steps));
  if (gpu_energy_joules)
    counter("kite:gpu_energy_joules_total", "Energy the GPU used since its driver loaded (NVML).", *gpu_energy_joules);
  counter("kite:engine_forward_seconds_total", "Time spent in forward passes.", st.forward_seconds);
  counter("kite:engine_schedule_seconds_total", "Host time spent scheduling.", st.schedule_seconds);

  std::lock_guard lock(mu_);
  o += "# HELP vllm:request_success_total Requests finished, by finish reason.\n";
  o += "# TYPE vllm:request_success_total counter\n";
  for (const char* r : {"stop", "length", "abort"}) {
    auto it = finished_.find(r);
    o += fmt::format("vllm:request_success_total{{{},finished_reason=\"{}\"}} {}\n", labels_, r,
                     it == finished_.end() ? 0 : it->second);
  }
  o += "# HELP kite:request_rejected_total Requests refused before reaching the engine, by HTTP status.\n";
  o += "# TYPE kite:request_rejected_total counter\n";
  for (int s : {400, 401, 404, 413, 429, 500}) {
    auto it = rejected_.find(s);
    o += fmt::format("kite:request_rejected_total{{{},status=\"{}\"}} {}\n", labels_, s,
                     it == rejected_.end() ? 0 : it->second);
  }
  auto hist = [&](const char* name, const char* help, const Histogram& h) {
    o += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    h.render(o, name, labels_);
  };
  hist("vllm:time_to_first_token_seconds", "Time from arrival to the first token.", ttft_);
  hist("vllm:inter_token_latency_seconds", "Time between consecutive tokens of a request.", itl_);
  hist("vllm:time_per_output_token_seconds", "Same as vllm:inter_token_latency_seconds (older name).", itl_);
  hist("vllm:e2e_request_latency_seconds", "Time from arrival to the last token.", e2e_);
  hist("vllm:request_queue_time_seconds", "Time from arrival to the first scheduling.", queue_);
  hist("vllm:request_prompt_tokens", "Prompt length of finished requests.", prompt_len_);
  hist("vllm:request_generation_tokens", "Tokens generated by finished requests.", gen_len_);
  return o;
}

}  // namespace kite::server
