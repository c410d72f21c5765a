#include "model/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "backend/ops/sample.h"
#include "core/error.h"
#include "core/parallel.h"

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
  const SamplingParams& sp = options.sampling;
  Rng rng(sp.seed ? *sp.seed : std::random_device{}() * 0x100000001ull ^ std::random_device{}());
  std::vector<int32_t> out;
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  auto t0 = std::chrono::steady_clock::now();
  Tensor logits = model.forward(prompt, cache, false);  // [1, vocab]
  auto t1 = t0;
  while (int64_t(out.size()) < options.max_tokens) {
    // One row through ops::sample_rows, as the engine samples: a uniform
    // from the request's stream when not greedy, penalties over the distinct
    // prompt and output ids.
    ops::SampleBatch batch;
    ops::SampleRow row;
    row.params = sp;
    if (!sp.greedy()) row.uniform = rng.uniform();
    ops::add_penalty_tokens(batch, row, prompt, out, c.vocab_size);
    batch.rows.push_back(row);
    const int32_t tok = ops::sample_rows(logits, batch)[0].token;
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
double PerplexityResult::base_ppl() const {
  return tokens_scored ? std::exp(base_nll_sum / double(tokens_scored)) : 0.0;
}

double PerplexityResult::mean_kl() const {
  double s = 0;
  for (float k : kl) s += k;
  return kl.empty() ? 0.0 : s / double(kl.size());
}

double PerplexityResult::kl_quantile(double q) const {
  if (kl.empty()) return 0.0;
  std::vector<float> v = kl;
  const size_t at = std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + ptrdiff_t(at), v.end());
  return v[at];
}

double log_sum_exp(std::span<const float> logits) {
  double mx = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float l : logits) s += std::exp(double(l) - mx);
  return mx + std::log(s);
}

namespace {

// One window: tokens [begin, begin + len) run on their own; logits at window
// positions [score_from, len - 1) are scored against the next token.
struct Window {
  int64_t begin, len, score_from;
};

std::vector<Window> plan_windows(int64_t n, const PerplexityOptions& o) {
  std::vector<Window> w;
  if (o.score_second_half) {
    for (int64_t b = 0; b + o.ctx <= n; b += o.ctx) w.push_back({b, o.ctx, o.ctx / 2});
  } else if (o.stride > 0) {
    int64_t prev_end = 0;
    for (int64_t b = 0; b < n; b += o.stride) {
      const int64_t e = std::min(b + o.ctx, n);
      // Score targets t in [max(b + 1, prev_end), e): logits at t - 1.
      const int64_t first_target = std::max(b + 1, prev_end);
      if (e - b >= 2 && first_target < e) w.push_back({b, e - b, first_target - 1 - b});
      prev_end = e;
      if (e == n) break;
    }
  } else {
    for (int64_t b = 0; b < n; b += o.ctx) {
      const int64_t len = std::min(o.ctx, n - b);
      if (len >= 2) w.push_back({b, len, 0});
    }
  }
  return w;
}

}  // namespace

PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, const PerplexityOptions& o) {
  if (o.ctx < 2) fail("--ctx", "ctx", "{} is too small; expected at least 2 tokens per window", o.ctx);
  if (o.stride < 0 || o.stride > o.ctx)
    fail("--stride", "stride", "{} is invalid; expected 1 to ctx = {} (or 0 for non-overlapping windows)", o.stride,
         o.ctx);
  if (o.stride > 0 && o.score_second_half)
    fail("--stride", "stride", "choose either --stride or --score-second-half, not both");
  const int64_t vocab = model.config().vocab_size;
  if (o.kl_base && o.kl_base->config().vocab_size != vocab)
    fail("--kl-base", "vocab_size", "the base model has {} tokens, the model {}; they must share a vocabulary",
         o.kl_base->config().vocab_size, vocab);
  const std::vector<Window> windows = plan_windows(int64_t(ids.size()), o);
  if (o.score_second_half && windows.empty())
    fail("--ctx", "ctx", "the text has {} tokens, fewer than one window of {}", ids.size(), o.ctx);
  PerplexityResult r;
  KvCache cache(model.config(), o.ctx);
  std::unique_ptr<KvCache> base_cache;
  if (o.kl_base) base_cache = std::make_unique<KvCache>(o.kl_base->config(), o.ctx);
  std::vector<int32_t> tokens;
  for (size_t wi = 0; wi < windows.size(); ++wi) {
    const Window& w = windows[wi];
    tokens.assign(ids.begin() + w.begin, ids.begin() + w.begin + w.len);
    if (o.score_second_half) tokens[0] = o.bos_id;
    cache.clear();
    Tensor logits = model.forward(tokens, cache, true);  // [len, vocab]
    Tensor base_logits;
    if (o.kl_base) {
      base_cache->clear();
      base_logits = o.kl_base->forward(tokens, *base_cache, true);  // [len, vocab]
    }
    // Scored rows in parallel; per-row results summed in order afterwards,
    // so the figures do not depend on the thread count.
    const int64_t rows = std::max<int64_t>(0, w.len - 1 - w.score_from);
    const size_t n_rows = static_cast<size_t>(rows);
    std::vector<double> nll(n_rows), base_nll(n_rows), kl(n_rows);
    std::vector<char> same(n_rows);
    parallel_for(rows, 8, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const int64_t i = w.score_from + k;
        std::span<const float> row(logits.data_as<const float>() + i * vocab, size_t(vocab));
        const int32_t target = tokens[size_t(i + 1)];
        const double lse = log_sum_exp(row);
        nll[size_t(k)] = lse - double(row[size_t(target)]);
        if (!o.kl_base) continue;
        std::span<const float> base(base_logits.data_as<const float>() + i * vocab, size_t(vocab));
        const double base_lse = log_sum_exp(base);
        base_nll[size_t(k)] = base_lse - double(base[size_t(target)]);
        double d = 0;
        for (int64_t v = 0; v < vocab; ++v) {
          const double lp = double(base[size_t(v)]) - base_lse;
          d += std::exp(lp) * (lp - (double(row[size_t(v)]) - lse));
        }
        kl[size_t(k)] = std::max(0.0, d);
        same[size_t(k)] = argmax(base) == argmax(row);
      }
    });
    for (int64_t k = 0; k < rows; ++k) {
      r.nll_sum += nll[size_t(k)];
      ++r.tokens_scored;
      if (!o.kl_base) continue;
      r.base_nll_sum += base_nll[size_t(k)];
      r.kl.push_back(float(kl[size_t(k)]));
      r.same_top += same[size_t(k)];
    }
    if (o.progress) o.progress(int64_t(wi) + 1, int64_t(windows.size()));
  }
  return r;
}

PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress) {
  PerplexityOptions o;
  o.ctx = ctx;
  o.progress = progress;
  return perplexity(model, ids, o);
}

}  // namespace kite
