// kite ppl: perplexity of a text file (the method of shared/README.md).
#include <chrono>
#include <cstdio>

#include "model/generation.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

Run add_ppl(CLI::App& app) {
  struct Args {
    std::string model, text, kl_base, device = "auto", quantization;
    int64_t ctx = 512, stride = 0;
    bool second_half = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "ppl",
      "Perplexity of a text: tokenized whole with one BOS, cut into non-overlapping windows scored on their own");
  c->add_option("--model,-m", a->model, "Model directory or .gguf file")->required();
  c->add_option("--text,-f", a->text, "UTF-8 text file to score")->required();
  c->add_option("--ctx,-c", a->ctx, "Window size in tokens")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  c->add_option("--stride", a->stride,
                "HF sliding window: windows of --ctx tokens every STRIDE tokens, each scoring only new tokens; "
                "0 = non-overlapping windows")
      ->capture_default_str();
  c->add_flag("--score-second-half", a->second_half,
              "llama-perplexity's scoring: BOS at each window start, only the second half of each window scored");
  c->add_option("--kl-base", a->kl_base,
                "Base model (e.g. the unquantized checkpoint): also report KL divergence of the token "
                "distributions against it and how often the top token agrees");
  c->add_option("--device", a->device, "cpu, cuda, cuda:N or auto (CUDA when present)")->capture_default_str();
  add_quantization_option(*c, a->quantization);
  c->add_flag("--quiet,-q", a->quiet, "No progress on stderr");
  return [a] {
    auto model = load_model_for(a->model, a->device, 1, {}, a->quantization);
    auto tok = load_tokenizer_for(a->model);
    std::unique_ptr<Model> base;
    if (!a->kl_base.empty()) base = load_model_for(a->kl_base, a->device);
    std::string text = read_text(a->text);
    auto ids = tok->encode(text, true);
    PerplexityOptions o;
    o.ctx = a->ctx;
    o.stride = a->stride;
    o.score_second_half = a->second_half;
    if (tok->bos_id()) o.bos_id = *tok->bos_id();
    o.kl_base = base.get();
    o.progress = [&](int64_t done, int64_t total) {
      if (!a->quiet && (done == total || done % 16 == 0))
        std::fprintf(stderr, "\rwindow %lld/%lld", (long long)done, (long long)total);
    };
    auto t0 = std::chrono::steady_clock::now();
    auto r = perplexity(*model, ids, o);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!a->quiet) std::fprintf(stderr, "\n");
    std::printf("tokens: %zu\ntokens scored: %lld\nnll: %.6f\nseconds: %.2f (%.0f tok/s)\n", ids.size(),
                (long long)r.tokens_scored, r.nll_sum / double(r.tokens_scored), s, double(ids.size()) / s);
    if (base) {
      std::printf(
          "base ppl: %.4f\ndelta ppl: %+.2f%%\nmean KLD: %.6f\n99%% KLD: %.6f\nmax KLD: %.6f\nsame top token: %.2f%%\n",
          r.base_ppl(), 100.0 * (r.ppl() / r.base_ppl() - 1.0), r.mean_kl(), r.kl_quantile(0.99), r.kl_quantile(1.0),
          100.0 * r.same_top_rate());
    }
    std::printf("ppl: %.4f\n", r.ppl());
    return 0;
  };
}

}  // namespace kite::cli
