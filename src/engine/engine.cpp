#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "model/generation.h"
#include "model/sampling.h"

namespace kite {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

TokenLogprobs to_logprobs(const ops::SampledToken& t) {
  TokenLogprobs l;
  l.token = t.token;
  l.logprob = t.logprob;
  l.rank = t.rank;
  l.top = t.top;
  return l;
}

// The largest cut <= want that does not split a UTF-8 sequence of `s`.
size_t utf8_floor(const std::string& s, size_t want) {
  while (want > 0 && want < s.size() && (static_cast<unsigned char>(s[want]) & 0xC0) == 0x80) --want;
  return want;
}

}  // namespace

// One parallel sample's state beside its Sequence.
struct SampleState {
  explicit SampleState(uint64_t seed) : rng(seed) {}
  Rng rng;  // one uniform per sampled (non-greedy) token
  std::unique_ptr<IncrementalDetokenizer> detok;
  std::string text;  // all text so far (cut at a matched stop string)
  size_t sent = 0;   // bytes of text already returned
  std::vector<int32_t> new_ids;
  std::vector<TokenLogprobs> new_logprobs;
  FinishReason finish = FinishReason::None;
  std::optional<int32_t> stop_token;
  std::string stop_string;
  bool reported = false;  // the final output went out
  int64_t generated = 0;
};

struct Request {
  std::string id;
  GenerationParams params;
  int64_t num_prompt = 0;
  std::vector<std::unique_ptr<Sequence>> seqs;  // seqs[i]->index == i; one until the first token forks the rest
  std::vector<SampleState> samples;             // n of them
  std::vector<TokenLogprobs> prompt_logprobs;   // entry p scores prompt token p + 1
  bool prompt_logprobs_sent = false;
  size_t max_stop_len = 0;
  bool aborted = false;
  RequestMetrics metrics;
  bool finished() const {
    return std::all_of(samples.begin(), samples.end(),
                       [](const SampleState& s) { return s.finish != FinishReason::None; });
  }
};

// Where a chunk's logits sit in the step's logits.
struct Engine::StepRows {
  int64_t prompt_row = 0;    // first prompt-logprob row
  int64_t prompt_count = 0;  // rows scoring prompt positions prompt_pos .. prompt_pos + count - 1
  int64_t prompt_pos = 0;
  int64_t sample_row = -1;   // the row to sample from, or -1; a request forking its n samples
                             // this step has n rows from here (sample i at sample_row + i)
  bool scores_only = false;  // the chunk ends the prompt of a max_tokens 0 request: it finishes here
};

namespace {
// The step forks a request's samples off this chunk's sequence.
bool forks(const Sequence& seq) { return seq.index == 0 && seq.request->seqs.size() < size_t(seq.request->params.n); }
}  // namespace

EngineConfig Engine::resolve(const Model& model, EngineConfig c) {
  const ModelConfig& m = model.config();
  if (c.block_size < 1 || c.block_size > 1024)
    fail("engine", "block_size", "{} is invalid; expected 1 to 1024 tokens", c.block_size);
  if (c.max_model_len == 0) c.max_model_len = m.max_position_embeddings;
  if (c.max_model_len < 2 || c.max_model_len > m.max_position_embeddings)
    fail("engine", "max_model_len", "{} is invalid; expected 2 to the model's max_position_embeddings = {}",
         c.max_model_len, m.max_position_embeddings);
  if (c.num_blocks == 0) {
    const size_t per_block = model.kv_bytes_per_block(c.block_size);
    c.num_blocks = int64_t(c.kv_cache_memory / per_block);
    if (c.num_blocks < 1)
      fail("engine", "kv_cache_memory", "{} bytes hold no KV block of {} bytes; give more KV cache memory",
           c.kv_cache_memory, per_block);
  }
  if (c.num_blocks < 1) fail("engine", "num_blocks", "{} is invalid; expected at least 1", c.num_blocks);
  return c;
}

size_t plan_kv_cache_memory(Model& model, const EngineConfig& c, double utilization, std::string* report) {
  const Device dev = model.device();
  if (dev.is_cpu()) return c.kv_cache_memory;
  if (!(utilization > 0 && utilization <= 1))
    fail("engine", "gpu_memory_utilization", "{} is invalid; expected a fraction in (0, 1]", utilization);
  const size_t act =
      model.activation_bytes(c.scheduler.max_num_batched_tokens, c.enforce_eager ? 0 : c.scheduler.max_num_seqs);
  empty_cache(dev);
  const size_t total = device_total_memory(dev), free_now = device_free_memory(dev);
  const double budget = utilization * double(total) - double(total - free_now) - double(act);
  const size_t per_block = model.kv_bytes_per_block(c.block_size);
  if (budget < double(per_block))
    fail("engine", "gpu_memory_utilization",
         "{:.2f} of {:.1f} GiB leaves no room for the KV cache: {:.1f} GiB in use (weights, runtime), {:.1f} GiB for "
         "activations; raise --gpu-memory-utilization or lower --max-num-batched-tokens / --max-num-seqs",
         utilization, double(total) / (1 << 30), double(total - free_now) / (1 << 30), double(act) / (1 << 30));
  if (report)
    *report = fmt::format(
        "memory: {:.1f} GiB device, {:.2f} used: {:.2f} GiB weights and runtime, {:.2f} GiB activations and graph "
        "buffers, {:.2f} GiB KV cache",
        double(total) / (1 << 30), utilization, double(total - free_now) / (1 << 30), double(act) / (1 << 30),
        budget / (1 << 30));
  return size_t(budget);
}

Engine::Engine(Model& model, const Tokenizer* tokenizer, const EngineConfig& config)
    : model_(model),
      tokenizer_(tokenizer),
      config_(resolve(model, config)),
      cache_(model.create_kv_cache(config_.num_blocks, config_.block_size)),
      blocks_(config_.num_blocks, config_.block_size, config_.enable_prefix_caching),
      scheduler_(config_.scheduler, blocks_) {
  counters_.kv_blocks_total = config_.num_blocks;
  model_.prepare(cache_, config_.scheduler.max_num_seqs, config_.max_model_len, config_.enforce_eager);
}

Engine::~Engine() = default;

void Engine::validate(std::span<const int32_t> prompt, const GenerationParams& p) const {
  const char* src = "request";
  if (prompt.empty()) fail(src, "prompt", "the prompt is empty; give at least one token");
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t t : prompt)
    if (t < 0 || t >= vocab) fail(src, "prompt", "token id {} outside the vocabulary [0, {})", t, vocab);
  p.validate(src);
  const int64_t total = int64_t(prompt.size()) + p.max_tokens;
  if (total > config_.max_model_len)
    fail(src, "max_tokens", "the prompt ({} tokens) plus max_tokens ({}) is {}, over max_model_len {}", prompt.size(),
         p.max_tokens, total, config_.max_model_len);
  if (blocks_.blocks_for(total) > config_.num_blocks)
    fail(src, "max_tokens", "{} tokens need {} KV blocks but the whole pool has {}; raise the KV cache memory", total,
         blocks_.blocks_for(total), config_.num_blocks);
  if (!config_.scheduler.enable_chunked_prefill && total > config_.scheduler.max_num_batched_tokens)
    fail(src, "max_tokens", "{} tokens could never run in one step of {} tokens without chunked prefill", total,
         config_.scheduler.max_num_batched_tokens);
  if (!p.stop.empty() && !tokenizer_) fail(src, "stop", "stop strings need a tokenizer; this engine has none");
}

void Engine::add_request(const std::string& id, std::vector<int32_t> prompt, const GenerationParams& params,
                         std::optional<uint64_t> group) {
  validate(prompt, params);
  if (requests_.count(id)) fail("request", "id", "a request with id '{}' is already running", id);
  if (group && *group >= kOwnGroups)
    fail("request", "group", "group {} is reserved for the engine; use one below 2^63", *group);
  auto r = std::make_unique<Request>();
  r->id = id;
  r->params = params;
  r->num_prompt = int64_t(prompt.size());
  for (const std::string& s : params.stop) r->max_stop_len = std::max(r->max_stop_len, s.size());
  r->metrics.arrival = now_seconds();
  r->metrics.prompt_tokens = r->num_prompt;
  // One RNG stream per sample: seed + index (unseeded requests draw a base seed).
  uint64_t seed = params.sampling.seed ? *params.sampling.seed
                                       : (uint64_t(std::random_device{}()) << 32) ^ uint64_t(std::random_device{}());
  r->samples.reserve(size_t(params.n));
  for (int32_t i = 0; i < params.n; ++i) {
    SampleState s(seed + uint64_t(i));
    if (tokenizer_) {
      s.detok = std::make_unique<IncrementalDetokenizer>(*tokenizer_, params.skip_special_tokens);
      // Primed with the prompt so the first piece keeps its leading space.
      for (int32_t t : prompt) s.detok->push(t);
    }
    r->samples.push_back(std::move(s));
  }
  auto seq = std::make_unique<Sequence>();
  seq->id = next_seq_id_++;
  seq->priority = params.priority;
  seq->arrival = next_arrival_++;
  seq->group = group ? *group : next_own_group_++;
  seq->seats = params.n;  // seats for every sample it will fork
  seq->tokens = std::move(prompt);
  seq->num_prompt_tokens = r->num_prompt;
  seq->use_prefix_cache = params.prompt_logprobs < 0;  // prompt logprobs need every position computed
  seq->request = r.get();
  seq->index = 0;
  scheduler_.add(seq.get());
  r->seqs.push_back(std::move(seq));
  counters_.prompt_tokens += r->num_prompt;
  requests_.emplace(id, std::move(r));
}

bool Engine::abort(const std::string& id) {
  auto it = requests_.find(id);
  if (it == requests_.end() || it->second->aborted || it->second->finished()) return false;
  Request& r = *it->second;
  r.aborted = true;
  for (auto& seq : r.seqs)
    if (seq->status != SeqStatus::Finished) scheduler_.remove(seq.get());
  for (SampleState& s : r.samples)
    if (s.finish == FinishReason::None) s.finish = FinishReason::Abort;
  aborted_.push_back(&r);
  return true;
}

bool Engine::has_work() const { return !requests_.empty(); }

EngineStats Engine::stats() const {
  EngineStats s = counters_;
  s.num_running = scheduler_.num_running();
  s.num_waiting = scheduler_.num_waiting();
  s.num_preemptions = scheduler_.num_preemptions();
  s.kv_blocks_used = blocks_.num_used_blocks();
  s.kv_blocks_total = blocks_.num_blocks();
  s.prefix_cache = blocks_.prefix_stats();
  return s;
}

BatchInput Engine::build_batch(const SchedulerOutput& out, std::vector<StepRows>& rows) const {
  BatchInput b;
  const int64_t bs = config_.block_size;
  for (const ScheduledChunk& c : out.chunks)
    b.max_blocks = std::max(b.max_blocks, int32_t(c.seq->blocks.blocks.size()));
  b.tokens.reserve(size_t(out.num_tokens));
  b.positions.reserve(size_t(out.num_tokens));
  b.slot_mapping.reserve(size_t(out.num_tokens));
  b.query_start.push_back(0);
  b.block_tables.assign(out.chunks.size() * size_t(b.max_blocks), -1);
  rows.assign(out.chunks.size(), StepRows{});
  for (size_t k = 0; k < out.chunks.size(); ++k) {
    const Sequence& seq = *out.chunks[k].seq;
    const int64_t n = out.chunks[k].num_tokens, start = seq.num_computed, row0 = b.num_tokens();
    for (int64_t p = start; p < start + n; ++p) {
      b.tokens.push_back(seq.tokens[size_t(p)]);
      b.positions.push_back(int32_t(p));
      b.slot_mapping.push_back(int32_t(seq.blocks.blocks[size_t(p / bs)] * bs + p % bs));
    }
    b.query_start.push_back(int32_t(b.num_tokens()));
    b.context_lens.push_back(int32_t(start + n));
    std::copy(seq.blocks.blocks.begin(), seq.blocks.blocks.end(), b.block_tables.begin() + ptrdiff_t(k * b.max_blocks));
    // Prompt logprobs: rows at positions p < num_prompt - 1 not scored yet.
    const Request& r = *seq.request;
    StepRows& sr = rows[k];
    if (r.params.prompt_logprobs >= 0 && seq.index == 0) {
      const int64_t lo = std::max<int64_t>(start, int64_t(r.prompt_logprobs.size()));
      const int64_t hi = std::min<int64_t>(start + n, r.num_prompt - 1);
      if (hi > lo) {
        sr.prompt_row = int64_t(b.logit_rows.size());
        sr.prompt_count = hi - lo;
        sr.prompt_pos = lo;
        for (int64_t p = lo; p < hi; ++p) b.logit_rows.push_back(int32_t(row0 + p - start));
      }
    }
    if (out.chunks[k].samples() && r.params.max_tokens == 0) {
      sr.scores_only = true;  // no row to sample: the request finishes after its prompt
    } else if (out.chunks[k].samples()) {
      sr.sample_row = int64_t(b.logit_rows.size());
      for (int32_t i = 0, copies = forks(seq) ? r.params.n : 1; i < copies; ++i)
        b.logit_rows.push_back(int32_t(row0 + n - 1));
    }
  }
  return b;
}

ops::SampleBatch Engine::build_samples(const SchedulerOutput& out, const std::vector<StepRows>& rows) {
  ops::SampleBatch sb;
  const int64_t vocab = model_.config().vocab_size;
  for (size_t k = 0; k < out.chunks.size(); ++k) {
    const Sequence& seq = *out.chunks[k].seq;
    Request& r = *seq.request;
    const StepRows& sr = rows[k];
    for (int64_t i = 0; i < sr.prompt_count; ++i) {  // prompt logprobs: score the next prompt token
      ops::SampleRow row;
      row.forced_token = seq.tokens[size_t(sr.prompt_pos + i + 1)];
      row.num_logprobs = r.params.prompt_logprobs;
      sb.rows.push_back(row);
    }
    if (sr.sample_row < 0) continue;
    const GenerationParams& p = r.params;
    const SamplingParams& sp = p.sampling;
    // The samples drawing from this row: all n when they fork off it now.
    const int32_t first = forks(seq) ? 0 : seq.index, last = forks(seq) ? p.n : seq.index + 1;
    for (int32_t idx = first; idx < last; ++idx) {
      SampleState& st = r.samples[size_t(idx)];
      ops::SampleRow row;
      row.params = sp;
      row.num_logprobs = p.logprobs;
      if (!sp.greedy()) row.uniform = st.rng.uniform();
      const std::span<const int32_t> tokens(seq.tokens);  // distinct ids of prompt and output, with output counts
      const size_t num_prompt = size_t(seq.num_prompt_tokens);
      ops::add_penalty_tokens(sb, row, tokens.first(num_prompt), tokens.subspan(num_prompt), vocab);
      if (st.generated < p.min_tokens) {  // no stop before min_tokens
        row.banned_begin = int32_t(sb.banned.size());
        for (int32_t t : p.stop_token_ids)
          if (t >= 0 && t < vocab) sb.banned.push_back(t);
        if (!p.ignore_eos)
          for (int32_t t : config_.eos_ids)
            if (t >= 0 && t < vocab) sb.banned.push_back(t);
        row.banned_end = int32_t(sb.banned.size());
      }
      sb.rows.push_back(row);
    }
  }
  return sb;
}

std::vector<RequestOutput> Engine::step() {
  std::vector<RequestOutput> outputs;
  for (Request* r : aborted_) {
    r->metrics.finished = now_seconds();
    outputs.push_back(collect(*r, true));
    ++counters_.requests_finished;
    requests_.erase(r->id);
  }
  aborted_.clear();

  const double t0 = now_seconds();
  SchedulerOutput out = scheduler_.schedule();
  const double t1 = now_seconds();
  counters_.schedule_seconds += t1 - t0;
  for (Sequence* s : out.preempted) ++s->request->metrics.preemptions;
  if (out.empty()) return outputs;
  for (const BlockCopy& c : out.copies) model_.copy_kv_block(cache_, c.src, c.dst);
  std::vector<StepRows> rows;
  BatchInput batch = build_batch(out, rows);
  ops::SampleBatch samples = build_samples(out, rows);
  const std::vector<ops::SampledToken> picked = model_.forward_batch_sample(batch, cache_, samples);
  KITE_CHECK(picked.size() == batch.logit_rows.size(), "{} sampled tokens for {} logit rows", picked.size(),
             batch.logit_rows.size());
  const double now = now_seconds();
  counters_.forward_seconds += now - t1;
  scheduler_.finish_step(out);
  ++counters_.steps;

  std::vector<Request*> touched;
  for (size_t k = 0; k < out.chunks.size(); ++k) process_chunk(out.chunks[k], rows[k], picked, now, touched);
  for (Request* r : touched) {
    const bool final = r->finished();
    if (final) r->metrics.finished = now;
    RequestOutput o = collect(*r, final);
    if (!o.samples.empty() || !o.prompt_logprobs.empty() || o.finished) outputs.push_back(std::move(o));
    if (final) {
      ++counters_.requests_finished;
      requests_.erase(r->id);
    }
  }
  return outputs;
}

void Engine::process_chunk(const ScheduledChunk& chunk, const StepRows& rows,
                           const std::vector<ops::SampledToken>& picked, double now, std::vector<Request*>& touched) {
  Sequence& seq = *chunk.seq;
  Request& r = *seq.request;
  if (r.metrics.first_scheduled == 0) r.metrics.first_scheduled = now;
  if (r.metrics.cached_tokens == 0) r.metrics.cached_tokens = seq.blocks.num_cached_tokens;
  if (std::find(touched.begin(), touched.end(), &r) == touched.end()) touched.push_back(&r);
  for (int64_t i = 0; i < rows.prompt_count; ++i) {
    const int64_t pos = rows.prompt_pos + i;
    KITE_CHECK(pos == int64_t(r.prompt_logprobs.size()), "prompt logprob position {} out of order", pos);
    r.prompt_logprobs.push_back(to_logprobs(picked[size_t(rows.prompt_row + i)]));
  }
  if (rows.scores_only) {
    // Only the prompt's logprobs were wanted: every sample ends now, with no
    // token and no text (the prompt's held-back detokenizer bytes are not output).
    for (SampleState& s : r.samples) s.finish = FinishReason::Length;
    scheduler_.remove(&seq);
    return;
  }
  if (rows.sample_row < 0) return;
  if (forks(seq)) {
    // The prompt is done: fork the other samples, sharing its blocks.
    for (int32_t i = 1; i < r.params.n; ++i) {
      auto child = std::make_unique<Sequence>();
      child->id = next_seq_id_++;
      child->priority = seq.priority;
      child->arrival = seq.arrival;
      child->group = seq.group;
      child->tokens = seq.tokens;
      child->num_prompt_tokens = seq.num_prompt_tokens;
      child->num_computed = seq.num_computed;
      child->use_prefix_cache = seq.use_prefix_cache;
      child->request = seq.request;
      child->index = i;
      blocks_.fork(seq.blocks, child->blocks);
      scheduler_.add_running(child.get(), &seq);
      r.seqs.push_back(std::move(child));
    }
    for (auto& s : r.seqs) sample_token(r, *s, picked[size_t(rows.sample_row + s->index)], now);
    return;
  }
  sample_token(r, seq, picked[size_t(rows.sample_row)], now);
}

void Engine::sample_token(Request& r, Sequence& seq, const ops::SampledToken& picked, double now) {
  SampleState& s = r.samples[size_t(seq.index)];
  const GenerationParams& p = r.params;
  const int32_t tok = picked.token;
  if (p.logprobs >= 0) s.new_logprobs.push_back(to_logprobs(picked));
  seq.tokens.push_back(tok);
  s.new_ids.push_back(tok);
  ++s.generated;
  ++r.metrics.generated_tokens;
  ++counters_.generation_tokens;
  if (seq.index == 0) {
    if (r.metrics.first_token == 0)
      r.metrics.first_token = now;
    else
      r.metrics.inter_token.push_back(now - r.metrics.last_token);
    r.metrics.last_token = now;
  }
  if (contains(p.stop_token_ids, tok) || (!p.ignore_eos && contains(config_.eos_ids, tok))) {
    s.stop_token = tok;
    finish_sample(r, seq, FinishReason::Stop);
    return;
  }
  append_text(r, s, seq, false);
  if (s.finish != FinishReason::None) return;
  if (s.generated >= p.max_tokens || seq.num_tokens() >= config_.max_model_len)
    finish_sample(r, seq, FinishReason::Length);
}

void Engine::append_text(Request& r, SampleState& s, Sequence& seq, bool final) {
  if (!s.detok) return;
  const size_t old = s.text.size();
  s.text += final ? s.detok->flush() : s.detok->push(seq.tokens.back());
  if (r.params.stop.empty() || s.text.size() == old) return;
  // A match can only end in the new text: search from max_stop_len - 1 bytes before it.
  const size_t from = old > r.max_stop_len - 1 ? old - (r.max_stop_len - 1) : 0;
  size_t best = std::string::npos;
  const std::string* hit = nullptr;
  for (const std::string& stop : r.params.stop) {
    const size_t at = s.text.find(stop, from);
    if (at < best) best = at, hit = &stop;
  }
  if (!hit) return;
  s.text.resize(best + (r.params.include_stop_str_in_output ? hit->size() : 0));
  s.stop_string = *hit;
  if (!final) finish_sample(r, seq, FinishReason::Stop);
}

void Engine::finish_sample(Request& r, Sequence& seq, FinishReason why) {
  SampleState& s = r.samples[size_t(seq.index)];
  // Flush the detokenizer's held-back bytes, unless a stop string ended the text.
  if (s.stop_string.empty()) append_text(r, s, seq, true);
  s.finish = s.stop_string.empty() ? why : FinishReason::Stop;
  scheduler_.remove(&seq);
}

RequestOutput Engine::collect(Request& r, bool final) {
  RequestOutput o;
  o.id = r.id;
  if (r.params.prompt_logprobs >= 0 && !r.prompt_logprobs_sent &&
      int64_t(r.prompt_logprobs.size()) == r.num_prompt - 1) {
    o.prompt_logprobs = std::move(r.prompt_logprobs);
    r.prompt_logprobs_sent = true;
  }
  for (size_t i = 0; i < r.samples.size(); ++i) {
    SampleState& s = r.samples[i];
    const bool ending = s.finish != FinishReason::None && !s.reported;
    if (s.new_ids.empty() && !ending) continue;
    SampleOutput so;
    so.index = int32_t(i);
    so.token_ids = std::move(s.new_ids);
    so.logprobs = std::move(s.new_logprobs);
    s.new_ids.clear();
    s.new_logprobs.clear();
    // Hold back what could still turn out to be the start of a stop string.
    size_t end = s.text.size();
    if (!ending && r.max_stop_len > 1)
      end = utf8_floor(s.text, end > r.max_stop_len - 1 ? end - (r.max_stop_len - 1) : 0);
    if (end > s.sent) {
      so.text = s.text.substr(s.sent, end - s.sent);
      s.sent = end;
    }
    so.finish = s.finish;
    so.stop_token = s.stop_token;
    so.stop_string = s.stop_string;
    so.num_tokens = s.generated;
    if (ending) s.reported = true;
    o.samples.push_back(std::move(so));
  }
  o.finished = final;
  if (final) o.metrics = r.metrics;
  return o;
}

}  // namespace kite
