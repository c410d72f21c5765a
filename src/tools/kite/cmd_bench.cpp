// kite bench latency: prefill and decode speed of a batch through the
// engine (greedy, EOS ignored), against the weight-bandwidth floor.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "engine/engine.h"
#include "model/decoder.h"
#include "model/generation.h"
#include "model/tensor_parallel.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

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

// Device copy bandwidth (bytes read + written per second), best of a few
// device-to-device copies of 1 GiB.
double device_copy_bandwidth(Device dev) {
  const int64_t n = int64_t(1) << 29;  // BF16 elements: 1 GiB
  Tensor a = Tensor::zeros({n}, DType::BF16, dev), b = Tensor::zeros({n}, DType::BF16, dev);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    synchronize(dev);
    const double t = now_s();
    b.copy_from(a);
    synchronize(dev);
    best = std::max(best, 2.0 * double(a.nbytes()) / (now_s() - t));
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
    std::string device = "auto";
    int tensor_parallel_size = 1;
    ClusterSpec cluster;
    int64_t batch = 1, prompt_len = 128, gen_len = 128, reps = 3;
    double kv_cache_gib = 0;
    bool json = false;
    bool enforce_eager = false;
    std::string quantization;
  };
  auto a = std::make_shared<Args>();
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  CLI::App* c = bench->add_subcommand("latency", "Prompt (prefill) and decode speed, and peak memory, for one request");
  bench->require_subcommand(1);
  c->add_option("--model,-m", a->model, "Model directory or .gguf file")->required();
  c->add_option("--device", a->device, "cpu, cuda, cuda:N or auto (CUDA when present)")->capture_default_str();
  add_tensor_parallel_option(*c, a->tensor_parallel_size, a->cluster);
  add_quantization_option(*c, a->quantization);
  c->add_option("--batch,-b", a->batch, "Sequences run together")->capture_default_str();
  c->add_option("--prompt-len,-p", a->prompt_len, "Prompt tokens")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--gen-len,-n", a->gen_len, "Generated tokens")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--reps,-r", a->reps, "Repetitions; the best is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  Run throughput = add_bench_throughput(*bench);
  Run serve = add_bench_serve(*bench);
  c->add_option("--kv-cache-gib", a->kv_cache_gib, "KV pool in GiB; 0 = exactly what the batch needs")
      ->capture_default_str();
  c->add_flag("--json", a->json, "Print one JSON object instead of the table");
  c->add_flag("--enforce-eager", a->enforce_eager, "No CUDA graphs for decode steps");
  return [a, c, throughput, serve] {
    if (!c->parsed()) {
      const int rc = serve();
      return rc == -1 ? throughput() : rc;
    }
    if (a->batch < 1) fail("--batch", "batch", "{} is invalid; expected at least 1", a->batch);
    auto model = load_model_for(a->model, a->device, a->tensor_parallel_size, a->cluster, a->quantization);
    if (!model) return 0;  // another node of a multi-node job: it served node 0
    const ModelConfig& cfg = model->config();
    const Device dev = model->device();
    if (a->prompt_len + a->gen_len > cfg.max_position_embeddings)
      fail("--prompt-len", "prompt-len", "{} + {} exceeds the model's context {}", a->prompt_len, a->gen_len,
           cfg.max_position_embeddings);
    // The batched engine, greedy, EOS ignored: prefill of the whole batch,
    // then decode steps of `batch` tokens.
    EngineConfig ec;
    ec.max_model_len = a->prompt_len + a->gen_len;
    ec.scheduler.max_num_seqs = std::max<int64_t>(a->batch, 1);
    ec.scheduler.max_num_batched_tokens = std::max<int64_t>(a->prompt_len * a->batch, 2048);
    ec.enable_prefix_caching = false;
    ec.enforce_eager = a->enforce_eager;
    const int64_t per_seq = (ec.max_model_len + ec.block_size - 1) / ec.block_size;
    if (a->kv_cache_gib > 0)
      ec.kv_cache_memory = size_t(a->kv_cache_gib * double(size_t(1) << 30));
    else
      ec.num_blocks = per_seq * a->batch;
    Engine engine(*model, nullptr, ec);
    std::mt19937 rng(1234);
    GenerationParams gp;
    gp.sampling.temperature = 0;
    gp.max_tokens = a->gen_len;
    gp.ignore_eos = true;
    double best_pp = 0, best_tg = 0, best_step_ms = 0, best_total = 0;
    for (int64_t r = 0; r < a->reps + 1; ++r) {  // the first run warms up
      for (int64_t b = 0; b < a->batch; ++b) {
        std::vector<int32_t> prompt(size_t(a->prompt_len));
        for (auto& t : prompt) t = int32_t(3 + rng() % uint32_t(cfg.vocab_size - 3));
        engine.add_request(fmt::format("bench-{}-{}", r, b), std::move(prompt), gp);
      }
      synchronize(dev);
      const double t0 = now_s();
      double t_first = 0;
      int64_t generated = 0, decode_steps = 0;
      while (engine.has_work()) {
        for (const RequestOutput& o : engine.step())
          for (const SampleOutput& so : o.samples) generated += int64_t(so.token_ids.size());
        if (t_first == 0 && generated >= a->batch) {
          synchronize(dev);
          t_first = now_s();
        } else if (t_first > 0) {
          ++decode_steps;
        }
      }
      synchronize(dev);
      const double t2 = now_s();
      if (r == 0) continue;
      best_pp = std::max(best_pp, double(a->prompt_len * a->batch) / (t_first - t0));
      // llama-batched-bench's S: every prompt and generated token over the whole run.
      best_total = std::max(best_total, double((a->prompt_len + a->gen_len) * a->batch) / (t2 - t0));
      if (decode_steps > 0) {
        best_tg = std::max(best_tg, double(generated - a->batch) / (t2 - t_first));
        const double step_ms = 1e3 * (t2 - t_first) / double(decode_steps);
        best_step_ms = best_step_ms == 0 ? step_ms : std::min(best_step_ms, step_ms);
      }
    }
    // GPU-busy fraction of a decode step: device time of the step's graph
    // replayed back to back over the step's wall time in the engine.
    double busy = 0, gpu_step_ms = 0;
    if (best_step_ms > 0) {
      if (auto* dm = dynamic_cast<DecoderModel*>(model.get()))
        gpu_step_ms = dm->graph_step_ms(a->batch, 20);
      else if (auto* tp = dynamic_cast<TensorParallelModel*>(model.get()); tp && !dev.is_cpu())
        gpu_step_ms = tp->graph_step_ms(a->batch, 20);
      busy = gpu_step_ms / best_step_ms;
    }
    const double bw = dev.is_cpu() ? copy_bandwidth() : device_copy_bandwidth(dev);
    const double bytes = double(model->weight_bytes());
    // Weights read once per decode step; tensor-parallel ranks read their
    // shares at once, each at the device's bandwidth.
    const int tp_size = model->tensor_parallel_size();
    const double floor_tps = (dev.is_cpu() ? 1 : tp_size) * bw / bytes * double(a->batch);
    const double rss = peak_rss_mib();
    if (a->json) {
      std::printf(
          "{\"device\": \"%s\", \"batch\": %lld, \"prompt_len\": %lld, \"gen_len\": %lld, "
          "\"prefill_tok_s\": %.1f, \"decode_tok_s\": %.1f, \"decode_step_ms\": %.3f, "
          "\"weight_bytes\": %.0f, \"copy_bandwidth\": %.4g, \"decode_vs_floor\": %.4f, \"gpu_step_ms\": %.3f, "
          "\"gpu_busy\": %.3f, \"total_tok_s\": %.1f, \"tensor_parallel_size\": %d}\n",
          device_description(dev).c_str(), (long long)a->batch, (long long)a->prompt_len, (long long)a->gen_len,
          best_pp, best_tg, best_step_ms, bytes, bw, best_tg / floor_tps, gpu_step_ms, busy, best_total, tp_size);
      return 0;
    }
    std::printf("device: %s%s\n", device_description(dev).c_str(),
                tp_size > 1 ? fmt::format(" and {} more (tensor parallel)", tp_size - 1).c_str() : "");
    std::printf("model: %s (%.1f MB of weights read per decode step)\n", a->model.c_str(), bytes / 1e6);
    std::printf("copy bandwidth: %.2f GB/s -> decode floor %.1f tok/s at batch %lld\n", bw / 1e9, floor_tps,
                (long long)a->batch);
    std::printf(
        "| batch | prompt | gen | prompt tok/s | decode tok/s | decode step ms | decode vs floor | peak RSS MiB |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    std::printf("| %lld | %lld | %lld | %.1f | %.1f | %.3f | %.0f%% | %.0f |\n", (long long)a->batch,
                (long long)a->prompt_len, (long long)a->gen_len, best_pp, best_tg, best_step_ms,
                100.0 * best_tg / floor_tps, rss);
    std::printf("all tokens (prompt + generated) per second over the run: %.1f\n", best_total);
    if (gpu_step_ms > 0)
      std::printf("decode step on the GPU (graph replay): %.3f ms -> GPU busy %.0f%% of the step\n", gpu_step_ms,
                  100.0 * busy);
    return 0;
  };
}

}  // namespace kite::cli
