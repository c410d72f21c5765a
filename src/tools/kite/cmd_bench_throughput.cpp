// kite bench throughput: many requests through the batched engine at once
// (vLLM's benchmark_throughput): total and output tokens/s, requests/s.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/engine.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

namespace {

struct ThroughputArgs {
  std::string model;
  std::string device = "auto";
  int tensor_parallel_size = 1;
  ClusterSpec cluster;
  std::string quantization;  // --quantization: fp8, int8, int4, nf4 at load
  std::string dataset;
  int64_t num_prompts = 32, input_len = 128, output_len = 128;
  int64_t max_num_seqs = 256, max_num_batched_tokens = 2048, max_model_len = 0;
  double kv_cache_gib = 0;  // 0: room for every request at once
  int64_t seed = 0;
  bool no_prefix_caching = false, json = false;
};

std::vector<std::vector<int32_t>> load_dataset(const ThroughputArgs& a, const Tokenizer& tok) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_text(a.dataset));
  } catch (const nlohmann::json::exception& e) {
    fail(a.dataset, "json", "not valid JSON ({}); expected a list of prompt strings", e.what());
  }
  if (!doc.is_array() || doc.empty()) fail(a.dataset, "json", "expected a non-empty list of prompts");
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < doc.size() && int64_t(prompts.size()) < a.num_prompts; ++i) {
    const auto& e = doc[i];
    const nlohmann::json* text = e.is_string() ? &e : e.is_object() && e.contains("prompt") ? &e["prompt"] : nullptr;
    if (!text || !text->is_string())
      fail(a.dataset, fmt::format("[{}]", i), "expected a string or an object with a string \"prompt\"");
    prompts.push_back(tok.encode(text->get<std::string>(), true));
  }
  return prompts;
}

int run_throughput(const ThroughputArgs& a) {
  auto model = load_model_for(a.model, a.device, a.tensor_parallel_size, a.cluster, a.quantization);
  if (!model) return 0;  // another node of a multi-node job: it served node 0
  const ModelConfig& cfg = model->config();
  std::unique_ptr<Tokenizer> tok;
  std::vector<std::vector<int32_t>> prompts;
  if (!a.dataset.empty()) {
    tok = load_tokenizer_for(a.model);
    prompts = load_dataset(a, *tok);
  } else {
    std::mt19937 rng(uint32_t(a.seed));
    for (int64_t i = 0; i < a.num_prompts; ++i) {
      std::vector<int32_t> p(size_t(a.input_len));
      for (auto& t : p) t = int32_t(3 + rng() % uint32_t(cfg.vocab_size - 3));
      prompts.push_back(std::move(p));
    }
  }
  int64_t longest = 0, prompt_tokens = 0;
  for (const auto& p : prompts) {
    longest = std::max<int64_t>(longest, int64_t(p.size()));
    prompt_tokens += int64_t(p.size());
  }
  EngineConfig ec;
  ec.max_model_len = a.max_model_len ? a.max_model_len : std::min(cfg.max_position_embeddings, longest + a.output_len);
  ec.enable_prefix_caching = !a.no_prefix_caching;
  ec.scheduler.max_num_seqs = a.max_num_seqs;
  ec.scheduler.max_num_batched_tokens = a.max_num_batched_tokens;
  if (a.kv_cache_gib > 0) {
    ec.kv_cache_memory = size_t(a.kv_cache_gib * double(size_t(1) << 30));
  } else {  // every request resident at once
    const int64_t per_seq = (longest + a.output_len + ec.block_size - 1) / ec.block_size;
    ec.num_blocks = per_seq * std::min<int64_t>(int64_t(prompts.size()), a.max_num_seqs);
  }
  Engine engine(*model, nullptr, ec);
  GenerationParams gp;
  gp.sampling.temperature = 0;
  gp.max_tokens = a.output_len;
  gp.ignore_eos = true;  // exactly output_len tokens each
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) engine.add_request(std::to_string(i), prompts[i], gp);
  int64_t out_tokens = 0, batch_tokens = 0;
  while (engine.has_work())
    for (const RequestOutput& o : engine.step())
      for (const SampleOutput& s : o.samples) out_tokens += int64_t(s.token_ids.size());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const EngineStats st = engine.stats();
  batch_tokens = prompt_tokens + out_tokens;
  const double n = double(prompts.size());
  if (a.json) {
    nlohmann::json j = {{"model", a.model},
                        {"device", device_description(model->device())},
                        {"num_prompts", prompts.size()},
                        {"prompt_tokens", prompt_tokens},
                        {"output_tokens", out_tokens},
                        {"seconds", secs},
                        {"requests_per_s", n / secs},
                        {"total_tokens_per_s", double(batch_tokens) / secs},
                        {"output_tokens_per_s", double(out_tokens) / secs},
                        {"steps", st.steps},
                        {"preemptions", st.num_preemptions},
                        {"scheduler_us_per_step", 1e6 * st.schedule_seconds / double(std::max<int64_t>(1, st.steps))},
                        {"kv_blocks", st.kv_blocks_total}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("device: %s\n", device_description(model->device()).c_str());
  std::printf("model: %s, %zu requests, %lld prompt + %lld output tokens, KV pool %lld blocks of %lld\n",
              a.model.c_str(), prompts.size(), (long long)prompt_tokens, (long long)out_tokens,
              (long long)st.kv_blocks_total, (long long)ec.block_size);
  std::printf("steps: %lld (%.1f tokens/step), preemptions: %lld, scheduler %.1f us/step\n", (long long)st.steps,
              double(batch_tokens) / double(std::max<int64_t>(1, st.steps)), (long long)st.num_preemptions,
              1e6 * st.schedule_seconds / double(std::max<int64_t>(1, st.steps)));
  std::printf("| requests | seconds | requests/s | total tok/s | output tok/s |\n|---|---|---|---|---|\n");
  std::printf("| %zu | %.2f | %.2f | %.1f | %.1f |\n", prompts.size(), secs, n / secs, double(batch_tokens) / secs,
              double(out_tokens) / secs);
  return 0;
}

}  // namespace

Run add_bench_throughput(CLI::App& bench) {
  auto a = std::make_shared<ThroughputArgs>();
  CLI::App* c = bench.add_subcommand("throughput", "Offline throughput: many requests through the batched engine");
  c->add_option("--model,-m", a->model, "Model directory or .gguf file")->required();
  c->add_option("--device", a->device, "cpu, cuda, cuda:N or auto (CUDA when present)")->capture_default_str();
  add_tensor_parallel_option(*c, a->tensor_parallel_size, a->cluster);
  add_quantization_option(*c, a->quantization);
  c->add_option("--num-prompts,-n", a->num_prompts, "Requests (all submitted at once)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--input-len", a->input_len, "Prompt tokens per request (random ids)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--output-len", a->output_len, "Tokens generated per request (EOS ignored)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--dataset", a->dataset, "JSON list of prompts (strings or {\"prompt\": ...}) instead of random ids");
  c->add_option("--max-num-seqs", a->max_num_seqs, "Most sequences per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--max-num-batched-tokens", a->max_num_batched_tokens, "Most tokens per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--max-model-len", a->max_model_len, "Context limit; 0 = longest prompt + output-len");
  c->add_option("--kv-cache-gib", a->kv_cache_gib, "KV pool size in GiB; 0 = room for every request at once");
  c->add_flag("--no-prefix-caching", a->no_prefix_caching, "Turn prefix caching off");
  c->add_option("--seed", a->seed, "Seed of the random prompts")->capture_default_str();
  c->add_flag("--json", a->json, "Print the figures as JSON");
  return [a] { return run_throughput(*a); };
}

}  // namespace kite::cli
