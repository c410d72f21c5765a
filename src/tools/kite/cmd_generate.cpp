// kite generate: one prompt, streamed to stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "engine/async_engine.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

namespace {
struct GenerateArgs {
  std::string model;
  std::string device = "auto";
  int tensor_parallel_size = 1;
  ClusterSpec cluster;
  std::string quantization;  // --quantization: fp8, int8, int4, nf4 at load
  std::string prompt;
  bool chat = false;
  std::string system;
  int64_t max_tokens = 128;
  SamplingParams sampling;  // the flags write into it (temperature defaults to 0 here: greedy)
  int64_t seed = -1;
  int64_t context = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;
};

int run_generate(const GenerateArgs& a) {
  auto t0 = std::chrono::steady_clock::now();
  auto model = load_model_for(a.model, a.device, a.tensor_parallel_size, a.cluster, a.quantization);
  if (!model) return 0;  // another node of a multi-node job: it served node 0
  auto tok = load_tokenizer_for(a.model);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<int32_t> ids;
  if (a.chat) {
    auto tmpl = load_chat_template(model_dir(a.model));
    if (!tmpl) fail(a.model, "chat_template", "the model has no chat template (tokenizer_config.json); drop --chat");
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.prompt});
    // The rendered text carries its own BOS, as with HF apply_chat_template.
    ids = tok->encode(tmpl->render(msgs, true), false);
  } else {
    ids = tok->encode(a.prompt, true);
  }

  GenerationParams gp;
  gp.max_tokens = a.max_tokens;
  gp.sampling = a.sampling;
  if (a.seed >= 0) gp.sampling.seed = uint64_t(a.seed);
  gp.ignore_eos = a.ignore_eos;
  gp.stop = a.stop;
  gp.validate("kite generate");

  // The engine sized for this one request: a KV pool of exactly its context.
  const ModelConfig& cfg = model->config();
  EngineConfig ec;
  ec.max_model_len = a.context > 0 ? a.context : cfg.max_position_embeddings;
  if (int64_t(ids.size()) >= ec.max_model_len)
    fail("--prompt", "prompt", "{} prompt tokens leave no room to generate in a context of {}", ids.size(),
         ec.max_model_len);
  gp.max_tokens = std::min<int64_t>(gp.max_tokens, ec.max_model_len - int64_t(ids.size()));
  ec.num_blocks = (int64_t(ids.size()) + gp.max_tokens + ec.block_size - 1) / ec.block_size;
  ec.eos_ids = stop_ids_for(a.model, *model, *tok);
  const int64_t prompt_tokens = int64_t(ids.size());
  AsyncEngine engine(std::make_unique<Engine>(*model, tok.get(), ec));
  auto stream = engine.submit("generate", std::move(ids), gp);
  RequestOutput out;
  RequestMetrics m;
  std::string error;
  while (stream->next(out)) {
    for (const SampleOutput& s : out.samples) {
      std::fwrite(s.text.data(), 1, s.text.size(), stdout);
      std::fflush(stdout);
    }
    if (out.finished) {
      m = out.metrics;
      error = out.error;
    }
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!error.empty()) throw Error("kite generate", "engine", error);
  const double ttft = m.first_token - m.arrival, decode = m.last_token - m.first_token;
  std::fprintf(stderr, "load: %.2f s | prompt: %lld tokens, %.1f tok/s | generation: %lld tokens, %.1f tok/s\n", load_s,
               (long long)prompt_tokens, ttft > 0 ? double(prompt_tokens) / ttft : 0.0, (long long)m.generated_tokens,
               decode > 0 ? double(m.generated_tokens - 1) / decode : 0.0);
  return 0;
}
}  // namespace

Run add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  a->sampling.temperature = 0.0f;
  CLI::App* c = app.add_subcommand("generate", "Generate a continuation of one prompt, streamed to stdout");
  c->add_option("--model,-m", a->model, "Model directory (config.json + safetensors) or .gguf file")->required();
  c->add_option("--device", a->device, "cpu, cuda, cuda:N or auto (CUDA when present)")->capture_default_str();
  add_tensor_parallel_option(*c, a->tensor_parallel_size, a->cluster);
  add_quantization_option(*c, a->quantization);
  c->add_option("--prompt,-p", a->prompt, "Prompt text")->required();
  c->add_flag("--chat", a->chat, "Wrap the prompt as a user message with the model's chat template");
  c->add_option("--system", a->system, "System message (with --chat)");
  c->add_option("--max-tokens,-n", a->max_tokens, "Most tokens to generate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--temperature,-t", a->sampling.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  c->add_option("--top-p", a->sampling.top_p,
                "Nucleus sampling: keep the smallest set of tokens with this much probability")
      ->capture_default_str();
  c->add_option("--top-k", a->sampling.top_k, "Keep only the K most likely tokens; 0 = off")->capture_default_str();
  c->add_option("--min-p", a->sampling.min_p, "Drop tokens less likely than min-p times the most likely one; 0 = off")
      ->capture_default_str();
  c->add_option("--repetition-penalty", a->sampling.repetition_penalty,
                "Divide logits of tokens already seen (prompt and output); 1 = off")
      ->capture_default_str();
  c->add_option("--presence-penalty", a->sampling.presence_penalty, "Subtract from logits of tokens already generated")
      ->capture_default_str();
  c->add_option("--frequency-penalty", a->sampling.frequency_penalty,
                "Subtract this times the count of each generated token")
      ->capture_default_str();
  c->add_option("--seed", a->seed, "Random seed; the same seed gives the same output; -1 = random")
      ->capture_default_str();
  c->add_option("--ctx", a->context, "Context size in tokens; 0 = the model's maximum")->capture_default_str();
  c->add_flag("--ignore-eos", a->ignore_eos, "Keep generating past end-of-sequence tokens");
  c->add_option("--stop", a->stop, "Stop when the text contains this string (repeatable); it is not printed");
  return [a] { return run_generate(*a); };
}

}  // namespace kite::cli
