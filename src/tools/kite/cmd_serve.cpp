// kite serve: the OpenAI-compatible API server.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/async_engine.h"
#include "formats/hf_config.h"
#include "model/decoder.h"
#include "server/api_server.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

namespace {

struct ServeArgs {
  std::string model;
  std::string device = "auto";
  int tensor_parallel_size = 1;
  ClusterSpec cluster;
  std::string quantization;  // --quantization: fp8, int8, int4, nf4 at load
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string served_model_name;
  int64_t max_model_len = 0;
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  double gpu_memory_utilization = 0.9;
  std::string kv_cache_memory;
  int64_t block_size = 16;
  bool no_prefix_caching = false;
  std::string api_key;
  std::string chat_template;
  int64_t max_queue = 0;
  int64_t max_seqs_per_request = 256;
  double shutdown_timeout = 30;
  int64_t max_body_mb = 32;
  int io_threads = 1;
  bool log_requests = false;
  bool enforce_eager = false;
};

// "4GiB", "512MiB", "2G", "1000000" -> bytes.
size_t parse_bytes(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail("--kv-cache-memory", "kv_cache_memory", "'{}' is not a size; write e.g. 4GiB, 512MiB or a byte count", s);
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = char(std::tolower(static_cast<unsigned char>(c)));
  double mul = 1;
  if (unit.empty() || unit == "b")
    mul = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb")
    mul = 1024.0;
  else if (unit == "m" || unit == "mib" || unit == "mb")
    mul = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb")
    mul = 1024.0 * 1024 * 1024;
  else
    fail("--kv-cache-memory", "kv_cache_memory", "unknown unit '{}' in '{}'; use KiB, MiB or GiB", unit, s);
  if (!(v > 0)) fail("--kv-cache-memory", "kv_cache_memory", "'{}' must be positive", s);
  return size_t(v * mul);
}

int run_serve(const ServeArgs& a) {
  if (a.model.empty())
    fail("kite serve", "--model",
         "no model given; pass --model PATH with a Hugging Face model directory, a quantized checkpoint written by "
         "kite quantize, or a .gguf file");
  if (a.port < 0 || a.port > 65535) fail("--port", "port", "{} is not a TCP port (0 to 65535)", a.port);
  if (!(a.gpu_memory_utilization > 0 && a.gpu_memory_utilization <= 1))
    fail("--gpu-memory-utilization", "gpu_memory_utilization", "{} is invalid; expected a fraction in (0, 1]",
         a.gpu_memory_utilization);
  if (a.max_queue < 0) fail("--max-queue", "max_queue", "{} is invalid; expected 0 (unlimited) or more", a.max_queue);
  if (a.max_seqs_per_request < 0)
    fail("--max-seqs-per-request", "max_seqs_per_request", "{} is invalid; expected 0 (unlimited) or more",
         a.max_seqs_per_request);

  auto model = load_model_for(a.model, a.device, a.tensor_parallel_size, a.cluster, a.quantization);
  if (!model) return 0;  // another node of a multi-node job: it served node 0
  auto tok = load_tokenizer_for(a.model);
  const std::string dir = model_dir(a.model);

  std::optional<ChatTemplate> tmpl;
  if (!a.chat_template.empty()) {
    // A file path, or the template text itself (as vLLM's --chat-template).
    std::string text = std::filesystem::exists(a.chat_template) ? read_text(a.chat_template) : a.chat_template;
    auto base = load_chat_template(dir);
    tmpl.emplace(text, base ? base->bos_token() : "", base ? base->eos_token() : "", a.chat_template);
  } else {
    tmpl = load_chat_template(dir);
  }

  EngineConfig ec;
  ec.block_size = a.block_size;
  ec.max_model_len = a.max_model_len;
  ec.enable_prefix_caching = !a.no_prefix_caching;
  ec.scheduler.max_num_seqs = a.max_num_seqs;
  ec.scheduler.max_num_batched_tokens = a.max_num_batched_tokens;
  ec.enforce_eager = a.enforce_eager;
  if (!a.kv_cache_memory.empty()) {
    ec.kv_cache_memory = parse_bytes(a.kv_cache_memory);
  } else if (!model->device().is_cpu()) {
    std::string report;
    ec.kv_cache_memory = plan_kv_cache_memory(*model, ec, a.gpu_memory_utilization, &report);
    std::fprintf(stderr, "kite serve: %s\n", report.c_str());
  }
  ec.eos_ids = stop_ids_for(a.model, *model, *tok);
  auto engine_owned = std::make_unique<Engine>(*model, tok.get(), ec);
  const Engine& eng = *engine_owned;
  const int64_t kv_tokens = eng.num_blocks() * eng.config().block_size;
  const int64_t max_len = eng.max_model_len();
  std::fprintf(stderr, "kite serve: model %s on %s, %.2f GiB of weights\n", a.model.c_str(),
               device_description(model->device()).c_str(), double(model->weight_bytes()) / double(1 << 30));
  if (auto* dm = dynamic_cast<const DecoderModel*>(model.get())) {
    std::string kernels;
    for (const std::string& k : dm->kernel_summary()) kernels += (kernels.empty() ? "" : ", ") + k;
    std::fprintf(stderr, "kite serve: %s definition; linear kernels: %s\n",
                 std::string(dm->architecture().name()).c_str(), kernels.c_str());
  }
  if (model->tensor_parallel_size() > 1)
    std::fprintf(stderr, "kite serve: tensor parallel over %d ranks (%s); the KV cache figures are per rank\n",
                 model->tensor_parallel_size(),
                 model->device().is_cpu() ? "CPU threads or nodes" : ("from " + model->device().str()).c_str());
  std::fprintf(stderr, "kite serve: KV cache (%s): %lld blocks of %lld tokens = %lld tokens; max_model_len %lld\n",
               std::string(dtype_name(model->kv_dtype())).c_str(), (long long)eng.num_blocks(),
               (long long)eng.config().block_size, (long long)kv_tokens, (long long)max_len);
  std::fprintf(stderr, "kite serve: maximum concurrency for %lld tokens per request: %.2fx\n", (long long)max_len,
               double(kv_tokens) / double(max_len));
  if (!model->device().is_cpu())
    if (auto* dm = dynamic_cast<const DecoderModel*>(model.get()))
      std::fprintf(stderr, "kite serve: %zu decode graphs recorded (%s), %.2f GiB of graph buffers\n", dm->num_graphs(),
                   a.enforce_eager ? "--enforce-eager" : "batch 1 to --max-num-seqs",
                   double(dm->graph_memory_bytes()) / (1 << 30));
  if (model->device().is_cpu() && a.gpu_memory_utilization != 0.9)
    std::fprintf(stderr,
                 "kite serve: --gpu-memory-utilization has no effect on the CPU; size the KV cache with "
                 "--kv-cache-memory\n");
  if (!tmpl) std::fprintf(stderr, "kite serve: the model has no chat template; /v1/chat/completions will answer 400\n");

  AsyncEngine engine(std::move(engine_owned));
  engine.set_max_waiting(a.max_queue);

  server::ModelInfo info;
  info.served_name = a.served_model_name.empty() ? a.model : a.served_model_name;
  info.root = a.model;
  info.max_model_len = max_len;
  info.created = int64_t(std::time(nullptr));
  info.tokenizer = tok.get();
  info.chat_template = tmpl ? &*tmpl : nullptr;
  // vLLM applies generation_config.json's sampling defaults; so does Kite.
  GenerationDefaults gd = load_generation_config(dir);
  if (gd.do_sample) {
    info.default_sampling.temperature = float(gd.temperature);
    info.default_sampling.top_p = float(gd.top_p);
    info.default_sampling.top_k = int32_t(gd.top_k);
    info.default_sampling.min_p = float(gd.min_p);
  }
  info.default_sampling.repetition_penalty = float(gd.repetition_penalty);

  server::ServerOptions so;
  so.http.host = a.host;
  so.http.port = uint16_t(a.port);
  so.http.max_body_bytes = size_t(a.max_body_mb) << 20;
  so.api_key = a.api_key;
  so.max_seqs_per_request = a.max_seqs_per_request;
  if (const Device dev = model->device(); !dev.is_cpu() && device_energy_joules(dev))
    so.gpu_energy_joules = [dev] { return device_energy_joules(dev); };
  if (so.api_key.empty())
    if (const char* k = std::getenv("KITE_API_KEY")) so.api_key = k;
  so.io_threads = a.io_threads;
  so.shutdown_timeout = std::chrono::milliseconds(int64_t(a.shutdown_timeout * 1000));
  so.log_requests = a.log_requests;
  server::Server srv(engine, info, so);
  std::fprintf(stderr, "kite serve: serving '%s' on http://%s:%u (OpenAI API under /v1)%s\n", info.served_name.c_str(),
               a.host.c_str(), unsigned(srv.port()), so.api_key.empty() ? "" : "; API key required");
  srv.run_until_signal();
  engine.shutdown();
  std::fprintf(stderr, "kite serve: stopped\n");
  return 0;
}

}  // namespace

Run add_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* c = app.add_subcommand("serve", "Serve a model behind an OpenAI-compatible HTTP API");
  c->add_option("--model,-m", a->model,
                "Hugging Face model directory, quantized checkpoint (kite quantize) or .gguf file");
  c->add_option("--device", a->device, "cpu, cuda, cuda:N or auto (CUDA when present)")->capture_default_str();
  add_tensor_parallel_option(*c, a->tensor_parallel_size, a->cluster);
  add_quantization_option(*c, a->quantization);
  c->add_option("--host", a->host, "Address to listen on")->capture_default_str();
  c->add_option("--port", a->port, "TCP port (0 = any free port)")->capture_default_str();
  c->add_option("--served-model-name", a->served_model_name, "The model name clients send; default: the --model path");
  c->add_option("--max-model-len", a->max_model_len, "Context limit per request; 0 = the model's")
      ->capture_default_str();
  c->add_option("--max-num-seqs", a->max_num_seqs, "Most sequences per step")->capture_default_str();
  c->add_option("--max-num-batched-tokens", a->max_num_batched_tokens, "Most tokens per step")->capture_default_str();
  c->add_option("--gpu-memory-utilization", a->gpu_memory_utilization,
                "Fraction of GPU memory for weights, activations and the KV cache (GPU only)")
      ->capture_default_str();
  c->add_option("--kv-cache-memory", a->kv_cache_memory, "KV cache size, e.g. 4GiB (default 1GiB on the CPU)");
  c->add_option("--block-size", a->block_size, "Tokens per KV block")->capture_default_str();
  c->add_flag("--no-enable-prefix-caching", a->no_prefix_caching, "Turn prefix caching off");
  c->add_option("--api-key", a->api_key,
                "Require 'Authorization: Bearer KEY' on every route but /health and /metrics (or set KITE_API_KEY)");
  c->add_option("--chat-template", a->chat_template, "Chat template: a file or the Jinja text; default: the model's");
  c->add_option("--max-queue", a->max_queue,
                "Most sequences waiting for a seat (beyond --max-num-seqs running) before 429 with Retry-After; "
                "0 = unlimited")
      ->capture_default_str();
  c->add_option("--max-seqs-per-request", a->max_seqs_per_request,
                "Most sequences (prompts x n) in one request; more is a 400; 0 = unlimited")
      ->capture_default_str();
  c->add_option("--shutdown-timeout", a->shutdown_timeout,
                "Seconds in-flight requests get to finish after SIGTERM/SIGINT")
      ->capture_default_str();
  c->add_option("--max-body-mb", a->max_body_mb, "Largest request body in MiB (larger: 413)")->capture_default_str();
  c->add_option("--io-threads", a->io_threads, "Threads running the HTTP connections")->capture_default_str();
  c->add_flag("--log-requests", a->log_requests, "Log one line per API request");
  c->add_flag("--enforce-eager", a->enforce_eager, "No CUDA graphs for decode steps");
  return [a] { return run_serve(*a); };
}

}  // namespace kite::cli
