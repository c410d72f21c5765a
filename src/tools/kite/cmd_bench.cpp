// kite bench latency: prompt and decode speed and peak memory for one sequence.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "model/generation.h"
#include "tools/kite/commands.h"

namespace kite::cli {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Host copy bandwidth (bytes read + written per second) over a buffer much
// larger than the caches, best of a few runs.
double copy_bandwidth() {
  const size_t n = size_t(256) << 20;
  std::vector<char> a(n, 1), b(n, 0);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double t = now_s();
    parallel_for(int64_t(n >> 20), 1, [&](int64_t lo, int64_t hi) {
      std::memcpy(b.data() + (lo << 20), a.data() + (lo << 20), size_t(hi - lo) << 20);
    });
    best = std::max(best, 2.0 * double(n) / (now_s() - t));
  }
  return best;
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}
}  // namespace

Run add_bench(CLI::App& app) {
  struct Args {
    std::string model;
    int64_t batch = 1, prompt_len = 128, gen_len = 128, reps = 3;
  };
  auto a = std::make_shared<Args>();
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  CLI::App* c = bench->add_subcommand("latency", "Prompt (prefill) and decode speed, and peak memory, for one request");
  bench->require_subcommand(1);
  c->add_option("--model,-m", a->model, "Model directory or .gguf file")->required();
  c->add_option("--batch,-b", a->batch, "Sequences per batch (1 until the batched engine lands)")
      ->capture_default_str();
  c->add_option("--prompt-len,-p", a->prompt_len, "Prompt tokens")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--gen-len,-n", a->gen_len, "Generated tokens")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--reps,-r", a->reps, "Repetitions; the best is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  Run throughput = add_bench_throughput(*bench);
  return [a, c, throughput] {
    if (!c->parsed()) return throughput();
    if (a->batch != 1)
      fail("--batch", "batch", "{} is not supported yet: this command measures one sequence (use 1)", a->batch);
    auto model = load_model(a->model);
    const ModelConfig& cfg = model->config();
    if (a->prompt_len + a->gen_len > cfg.max_position_embeddings)
      fail("--prompt-len", "prompt-len", "{} + {} exceeds the model's context {}", a->prompt_len, a->gen_len,
           cfg.max_position_embeddings);
    std::mt19937 rng(1234);
    std::vector<int32_t> prompt(size_t(a->prompt_len));
    for (auto& t : prompt) t = int32_t(3 + rng() % uint32_t(cfg.vocab_size - 3));
    double best_pp = 0, best_tg = 0;
    for (int64_t r = 0; r < a->reps; ++r) {
      KvCache cache(cfg, a->prompt_len + a->gen_len);
      double t0 = now_s();
      Tensor logits = model->forward(prompt, cache, false);
      double t1 = now_s();
      int32_t tok = argmax(std::span<const float>(logits.data_as<float>(), size_t(cfg.vocab_size)));
      for (int64_t i = 0; i < a->gen_len; ++i) {
        logits = model->forward(std::span<const int32_t>(&tok, 1), cache, false);
        tok = argmax(std::span<const float>(logits.data_as<float>(), size_t(cfg.vocab_size)));
      }
      double t2 = now_s();
      best_pp = std::max(best_pp, double(a->prompt_len) / (t1 - t0));
      best_tg = std::max(best_tg, double(a->gen_len) / (t2 - t1));
    }
    const double rss = peak_rss_mib();  // before the bandwidth probe's buffers
    const double bw = copy_bandwidth();
    const double bytes = double(model->weight_bytes());
    const double floor_tps = bw / bytes;
    std::printf("device: %s\n", device_description(kCpu).c_str());
    std::printf("model: %s (%.1f MB of weights read per decode step)\n", a->model.c_str(), bytes / 1e6);
    std::printf("copy bandwidth: %.2f GB/s -> decode floor %.1f tok/s\n", bw / 1e9, floor_tps);
    std::printf("| batch | prompt | gen | prompt tok/s | decode tok/s | decode vs floor | peak RSS MiB |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    std::printf("| %lld | %lld | %lld | %.1f | %.1f | %.0f%% | %.0f |\n", (long long)a->batch, (long long)a->prompt_len,
                (long long)a->gen_len, best_pp, best_tg, 100.0 * best_tg / floor_tps, rss);
    return 0;
  };
}

}  // namespace kite::cli
