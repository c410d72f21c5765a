// kite ppl: perplexity of a text file (the method of shared/README.md).
#include <chrono>
#include <cstdio>

#include "model/generation.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

Run add_ppl(CLI::App& app) {
  struct Args {
    std::string model, text;
    int64_t ctx = 512;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "ppl",
      "Perplexity of a text: tokenized whole with one BOS, cut into non-overlapping windows scored on their own");
  c->add_option("--model,-m", a->model, "Model directory or .gguf file")->required();
  c->add_option("--text,-f", a->text, "UTF-8 text file to score")->required();
  c->add_option("--ctx,-c", a->ctx, "Window size in tokens")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  c->add_flag("--quiet,-q", a->quiet, "No progress on stderr");
  return [a] {
    auto model = load_model(a->model);
    auto tok = load_tokenizer_for(a->model);
    std::string text = read_text(a->text);
    auto ids = tok->encode(text, true);
    auto t0 = std::chrono::steady_clock::now();
    auto r = perplexity(*model, ids, a->ctx, [&](int64_t done, int64_t total) {
      if (!a->quiet && (done == total || done % 16 == 0))
        std::fprintf(stderr, "\rwindow %lld/%lld", (long long)done, (long long)total);
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!a->quiet) std::fprintf(stderr, "\n");
    std::printf("tokens: %zu\ntokens scored: %lld\nnll: %.6f\nseconds: %.2f (%.0f tok/s)\n", ids.size(),
                (long long)r.tokens_scored, r.nll_sum / double(r.tokens_scored), s, double(ids.size()) / s);
    std::printf("ppl: %.4f\n", r.ppl());
    return 0;
  };
}

}  // namespace kite::cli
