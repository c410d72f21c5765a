#include "model/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"

namespace kite {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateStats generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& options,
                       const std::function<bool(int32_t)>& on_token) {
  const ModelConfig& c = model.config();
  const int64_t ctx = options.context > 0 ? options.context : c.max_position_embeddings;
  if (prompt.empty()) throw Error("prompt", "tokens", "the prompt is empty");
  if (int64_t(prompt.size()) >= ctx)
    fail("prompt", "tokens", "{} prompt tokens leave no room to generate in a context of {}", prompt.size(), ctx);
  options.sampling.validate("sampling");
  KvCache cache(c, std::min<int64_t>(ctx, int64_t(prompt.size()) + options.max_tokens));
  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  auto t0 = std::chrono::steady_clock::now();
  Tensor logits = model.forward(prompt, cache, false);  // [1, vocab]
  auto t1 = t0;
  while (int64_t(out.size()) < options.max_tokens) {
    std::span<float> row(logits.data_as<float>(), size_t(c.vocab_size));
    int32_t tok = sampler.sample(row, prompt, out);
    out.push_back(tok);
    if (out.size() == 1) {
      st.prompt_seconds = seconds_since(t0);
      t1 = std::chrono::steady_clock::now();
    }
    bool go_on = on_token(tok);
    if (!go_on || std::find(options.stop_ids.begin(), options.stop_ids.end(), tok) != options.stop_ids.end()) break;
    if (int64_t(out.size()) >= options.max_tokens || cache.size() >= cache.capacity()) break;
    logits = model.forward(std::span<const int32_t>(&out.back(), 1), cache, false);
  }
  st.generated = int64_t(out.size());
  st.decode_seconds = out.size() > 1 ? seconds_since(t1) : 0.0;
  return st;
}

double PerplexityResult::ppl() const { return tokens_scored ? std::exp(nll_sum / double(tokens_scored)) : 0.0; }

double log_sum_exp(std::span<const float> logits) {
  double mx = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float l : logits) s += std::exp(double(l) - mx);
  return mx + std::log(s);
}

PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress) {
  if (ctx < 2) fail("--ctx", "ctx", "{} is too small; expected at least 2 tokens per window", ctx);
  const int64_t n = int64_t(ids.size()), vocab = model.config().vocab_size;
  const int64_t windows = (n + ctx - 1) / ctx;
  PerplexityResult r;
  KvCache cache(model.config(), ctx);
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t begin = w * ctx, len = std::min(ctx, n - begin);
    if (len >= 2) {
      cache.clear();
      Tensor logits = model.forward(ids.subspan(size_t(begin), size_t(len)), cache, true);  // [len, vocab]
      const float* lp = logits.data_as<const float>();
      for (int64_t i = 0; i + 1 < len; ++i) {
        std::span<const float> row(lp + i * vocab, size_t(vocab));
        r.nll_sum += log_sum_exp(row) - double(row[size_t(ids[size_t(begin + i + 1)])]);
        ++r.tokens_scored;
      }
    }
    if (progress) progress(w + 1, windows);
  }
  return r;
}

}  // namespace kite
