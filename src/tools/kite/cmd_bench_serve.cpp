// kite bench serve: vLLM's serving benchmark against any OpenAI-compatible
// server (Kite, vLLM, llama-server): a dataset of prompts streamed at a
// request rate, TTFT/TPOT/ITL/E2E latency and throughput with vLLM's
// definitions, its JSON result keys, GPU power from the server's /metrics
// when it reports energy, and gnuplot plots.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "tools/bench_serve/client.h"
#include "tools/bench_serve/dataset.h"
#include "tools/bench_serve/plots.h"
#include "tools/bench_serve/report.h"
#include "tools/kite/commands.h"

namespace kite::cli {

namespace {

struct Args {
  std::string base_url, host = "127.0.0.1", endpoint = "/v1/completions", model, tokenizer, api_key;
  int port = 8000;
  std::string dataset_name = "random", dataset_path;
  int64_t num_prompts = 1000;
  int64_t sharegpt_output_len = 0;
  int64_t random_input_len = 1024, random_output_len = 128;
  double random_range_ratio = 0.0;
  std::string request_rate = "inf";
  double burstiness = 1.0;
  int64_t max_concurrency = 0;
  bool ignore_eos = false;
  double temperature = 0.0, top_p = 1.0, min_p = 0.0;
  int64_t top_k = -1;
  uint64_t seed = 0;
  std::string percentile_metrics = "ttft,tpot,itl", metric_percentiles = "99";
  std::vector<std::string> goodput;
  bool save_result = false, disable_tqdm = false, no_plots = false;
  std::string result_dir = ".", result_filename;
};

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

int run(const Args& a) {
  if (a.model.empty()) fail("--model", "model", "required: the model name the server serves (its --served-model-name)");
  const std::string base = a.base_url.empty() ? fmt::format("http://{}:{}", a.host, a.port) : a.base_url;
  bench::ClientOptions client;
  client.endpoint = bench::parse_endpoint(base, a.endpoint);
  client.model = a.model;
  client.api_key = a.api_key;
  if (client.api_key.empty())
    if (const char* k = std::getenv("OPENAI_API_KEY")) client.api_key = k;
  client.ignore_eos = a.ignore_eos;
  client.sampling = {{"temperature", a.temperature}};
  if (a.top_p != 1.0) client.sampling["top_p"] = a.top_p;
  if (a.top_k > 0) client.sampling["top_k"] = a.top_k;
  if (a.min_p > 0) client.sampling["min_p"] = a.min_p;

  bench::ReportOptions report;
  report.percentile_metrics = bench::parse_percentile_metrics(a.percentile_metrics);
  report.metric_percentiles = bench::parse_metric_percentiles(a.metric_percentiles);
  report.goodput_ms = bench::parse_goodput(a.goodput);

  bench::RunOptions run;
  if (a.request_rate == "inf") {
    run.request_rate = std::numeric_limits<double>::infinity();
  } else {
    size_t used = 0;
    try {
      run.request_rate = std::stod(a.request_rate, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != a.request_rate.size() || !(run.request_rate > 0))
      fail("--request-rate", "request_rate", "'{}' is not a positive number of requests per second or inf",
           a.request_rate);
  }
  run.burstiness = a.burstiness;
  run.max_concurrency = a.max_concurrency;
  run.seed = a.seed;

  // The tokenizer counts prompt (and, when the server reports no usage, output) tokens.
  const std::string tok_path = a.tokenizer.empty() ? a.model : a.tokenizer;
  if (!std::filesystem::exists(tok_path))
    fail("--tokenizer", "tokenizer",
         "'{}' is not a local model directory or tokenizer file; pass --tokenizer PATH (the served model's tokenizer)",
         tok_path);
  auto tok = Tokenizer::load(tok_path);

  std::vector<bench::BenchPrompt> prompts;
  if (a.dataset_name == "sharegpt") {
    if (a.dataset_path.empty()) fail("--dataset-path", "dataset_path", "required with --dataset-name sharegpt");
    prompts = bench::sample_sharegpt(a.dataset_path, a.num_prompts, *tok, a.seed,
                                     a.sharegpt_output_len > 0 ? std::optional(a.sharegpt_output_len) : std::nullopt);
  } else if (a.dataset_name == "random") {
    prompts = bench::sample_random(a.num_prompts, a.random_input_len, a.random_output_len, a.random_range_ratio, *tok,
                                   a.seed);
  } else if (a.dataset_name == "jsonl") {
    if (a.dataset_path.empty()) fail("--dataset-path", "dataset_path", "required with --dataset-name jsonl");
    prompts = bench::load_jsonl(a.dataset_path, a.num_prompts, *tok);
  } else {
    fail("--dataset-name", "dataset_name", "'{}' is not one of sharegpt, random, jsonl", a.dataset_name);
  }

  std::fprintf(stderr, "kite bench serve: %zu prompts to http://%s:%s%s, request rate %s, max concurrency %s\n",
               prompts.size(), client.endpoint.host.c_str(), client.endpoint.port.c_str(), client.endpoint.path.c_str(),
               a.request_rate.c_str(), a.max_concurrency > 0 ? std::to_string(a.max_concurrency).c_str() : "none");
  const bool tty = isatty(STDERR_FILENO);
  if (!a.disable_tqdm)
    run.progress = [tty, last = std::chrono::steady_clock::time_point{}](size_t done, size_t total) mutable {
      const auto now = std::chrono::steady_clock::now();
      if (done != total && now - last < std::chrono::milliseconds(tty ? 100 : 5000)) return;
      last = now;
      const int width = 40, filled = int(double(width) * double(done) / double(total));
      std::fprintf(stderr, "%s[%s%s] %zu/%zu%s", tty ? "\r" : "", std::string(size_t(filled), '=').c_str(),
                   std::string(size_t(width - filled), ' ').c_str(), done, total, tty && done != total ? "" : "\n");
    };

  const double e0 = bench::energy_joules(client.endpoint, client.api_key);
  double duration = 0;
  const auto results = bench::run_requests(client, run, prompts, duration);
  const double e1 = bench::energy_joules(client.endpoint, client.api_key);

  nlohmann::json m = bench::compute_metrics(results, duration, report, tok.get());
  if (std::isfinite(e0) && std::isfinite(e1) && e1 > e0 && duration > 0) {
    m["energy_joules"] = e1 - e0;
    m["avg_power_w"] = (e1 - e0) / duration;
    m["output_tokens_per_joule"] = double(m["total_output_tokens"].get<int64_t>()) / (e1 - e0);
  }
  std::printf("%s", bench::format_report(m, report).c_str());
  size_t failed = 0;
  for (const auto& r : results)
    if (!r.success && failed++ < 3) std::fprintf(stderr, "kite bench serve: a request failed: %s\n", r.error.c_str());

  if (a.save_result) {
    m["date"] = timestamp();
    m["backend"] = "openai";
    m["endpoint_type"] = client.endpoint.chat ? "openai-chat" : "openai";
    m["model_id"] = a.model;
    m["tokenizer_id"] = tok_path;
    m["num_prompts"] = prompts.size();
    m["request_rate"] = a.request_rate == "inf" ? nlohmann::json("inf") : nlohmann::json(run.request_rate);
    m["burstiness"] = a.burstiness;
    m["max_concurrency"] = a.max_concurrency > 0 ? nlohmann::json(a.max_concurrency) : nlohmann::json(nullptr);
    std::string name = a.result_filename;
    if (name.empty())
      name = fmt::format("kite-{}qps{}-{}-{}.json", a.request_rate,
                         a.max_concurrency > 0 ? fmt::format("-concurrency{}", a.max_concurrency) : "",
                         std::filesystem::path(a.model).filename().string(), timestamp());
    std::filesystem::create_directories(a.result_dir);
    const std::string path = (std::filesystem::path(a.result_dir) / name).string();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp);
      if (!f) fail(path, "--result-dir", "cannot write here; pick a writable --result-dir");
      f << m.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      if (!f) fail(path, "--result-dir", "writing failed (disk full?)");
    }
    std::filesystem::rename(tmp, path);
    std::fprintf(stderr, "kite bench serve: results in %s\n", path.c_str());
    if (!a.no_plots) {
      std::string why;
      const std::string prefix = path.substr(0, path.size() - (path.ends_with(".json") ? 5 : 0));
      auto pngs = bench::write_plots(results, prefix, why);
      for (const auto& p : pngs) std::fprintf(stderr, "kite bench serve: plot %s\n", p.c_str());
      if (pngs.empty()) std::fprintf(stderr, "kite bench serve: %s\n", why.c_str());
    }
  }
  return m["completed"].get<int64_t>() > 0 ? 0 : 1;
}

}  // namespace

Run add_bench_serve(CLI::App& bench) {
  auto a = std::make_shared<Args>();
  CLI::App* c = bench.add_subcommand(
      "serve", "Serving benchmark against an OpenAI-compatible server (vLLM's `bench serve` metrics and JSON)");
  c->add_option("--base-url", a->base_url, "Server URL, e.g. http://127.0.0.1:8000 (else --host and --port)");
  c->add_option("--host", a->host, "Server host")->capture_default_str();
  c->add_option("--port", a->port, "Server port")->capture_default_str();
  c->add_option("--endpoint", a->endpoint, "/v1/completions or /v1/chat/completions")->capture_default_str();
  c->add_option("--model", a->model, "The served model name (and its tokenizer, when a local path)")->required();
  c->add_option("--tokenizer", a->tokenizer, "Tokenizer (model directory) counting tokens; default: --model");
  c->add_option("--api-key", a->api_key, "Bearer key (or OPENAI_API_KEY)");
  c->add_option("--dataset-name", a->dataset_name, "sharegpt, random or jsonl")->capture_default_str();
  c->add_option("--dataset-path", a->dataset_path, "ShareGPT JSON or JSONL of {prompt, output_len}");
  c->add_option("--num-prompts", a->num_prompts, "Requests to send")->capture_default_str();
  c->add_option("--sharegpt-output-len", a->sharegpt_output_len, "Fixed output length for ShareGPT (0: its own)");
  c->add_option("--random-input-len", a->random_input_len, "Random dataset: prompt tokens")->capture_default_str();
  c->add_option("--random-output-len", a->random_output_len, "Random dataset: output tokens")->capture_default_str();
  c->add_option("--random-range-ratio", a->random_range_ratio, "Random dataset: lengths vary by this ratio")
      ->capture_default_str();
  c->add_option("--request-rate", a->request_rate, "Requests per second (Poisson), or inf")->capture_default_str();
  c->add_option("--burstiness", a->burstiness, "Gamma shape of the request gaps (1 = Poisson)")->capture_default_str();
  c->add_option("--max-concurrency", a->max_concurrency, "Most requests in flight (0 = no cap)")->capture_default_str();
  c->add_flag("--ignore-eos", a->ignore_eos, "Generate exactly the asked tokens (ignore_eos)");
  c->add_option("--temperature", a->temperature, "Sampling temperature")->capture_default_str();
  c->add_option("--top-p", a->top_p, "Sampling top-p")->capture_default_str();
  c->add_option("--top-k", a->top_k, "Sampling top-k (-1: off)")->capture_default_str();
  c->add_option("--min-p", a->min_p, "Sampling min-p")->capture_default_str();
  c->add_option("--seed", a->seed, "Dataset shuffle and request-gap seed")->capture_default_str();
  c->add_option("--percentile-metrics", a->percentile_metrics, "Of ttft,tpot,itl,e2el")->capture_default_str();
  c->add_option("--metric-percentiles", a->metric_percentiles, "e.g. 25,50,99")->capture_default_str();
  c->add_option("--goodput", a->goodput, "SLOs as NAME:MS (ttft, tpot, e2el), e.g. --goodput ttft:500 tpot:50");
  c->add_flag("--save-result", a->save_result, "Write the JSON result (vLLM's keys) and plots");
  c->add_option("--result-dir", a->result_dir, "Where --save-result writes")->capture_default_str();
  c->add_option("--result-filename", a->result_filename, "File name for --save-result");
  c->add_flag("--disable-tqdm", a->disable_tqdm, "No progress bar");
  c->add_flag("--no-plots", a->no_plots, "With --save-result: no gnuplot plots");
  return [a, c]() -> int {
    if (!c->parsed()) return -1;
    return run(*a);
  };
}

}  // namespace kite::cli
