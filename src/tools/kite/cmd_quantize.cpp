// kite quantize: calibrated post-training quantization of a Hugging Face
// checkpoint into a quantized checkpoint other tools load too.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "model/decoder.h"
#include "model/quantized_checkpoint.h"
#include "quantize/checkpoint_writer.h"
#include "quantize/quantize.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

namespace {

namespace fs = std::filesystem;

struct QuantizeArgs {
  std::string model, out, method, calib, overrides;
  int bits = 0;
  int64_t group = 0;
  bool asym = false, act_order = false, fp8_per_tensor = false, fp8_static = false, kv_fp8 = false;
  bool no_double_quant = false;
  double damp = 0.01, sq_alpha = 0.0;
  int64_t samples = 128, seqlen = 512;
  int64_t seed = 0;
};

// A progress bar with ETA on a terminal, plain lines otherwise.
class Progress {
 public:
  Progress() : tty_(isatty(fileno(stderr))), t0_(std::chrono::steady_clock::now()) {}
  void update(const std::string& what, int64_t done, int64_t total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double eta = done > 0 ? el / double(done) * double(total - done) : 0;
    if (tty_) {
      const int width = 30, fill = int(width * done / std::max<int64_t>(1, total));
      std::fprintf(stderr, "\r%s [%.*s%*s] %lld/%lld  %.0fs elapsed, ETA %.0fs", what.c_str(), fill,
                   "##############################", width - fill, "", (long long)done, (long long)total, el, eta);
      if (done == total) std::fputc('\n', stderr);
    } else {
      std::fprintf(stderr, "%s %lld/%lld (%.0fs elapsed, ETA %.0fs)\n", what.c_str(), (long long)done, (long long)total,
                   el, eta);
    }
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
};

int run_quantize(const QuantizeArgs& a) {
  QuantizeOptions o;
  o.method = parse_quant_method(a.method, "--method");
  o.bits = a.bits;
  o.group = a.group;
  o.symmetric = !a.asym;
  o.act_order = a.act_order;
  o.damp = a.damp;
  o.fp8_per_tensor = a.fp8_per_tensor;
  o.fp8_static_act = a.fp8_static;
  o.kv_cache_fp8 = a.kv_fp8;
  o.smoothquant_alpha = a.sq_alpha;
  o.nf4_double_quant = !a.no_double_quant;
  o.calib_samples = a.samples;
  o.calib_seqlen = a.seqlen;
  o.seed = uint64_t(a.seed);
  if (!a.overrides.empty()) o.overrides = load_quant_overrides(a.overrides);

  std::error_code ec;
  if (fs::exists(a.out, ec) && !(fs::is_directory(a.out, ec) && fs::is_empty(a.out, ec)))
    fail(a.out, "--out", "already exists and is not empty; choose a new directory");
  if (!fs::is_directory(a.model, ec))
    fail(a.model, "--model", "expected a Hugging Face model directory (config.json + *.safetensors)");
  if (is_quantized_checkpoint(a.model))
    fail(a.model + "/config.json", "quantization_config",
         "the model is already quantized; quantize the original (unquantized) checkpoint");

  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Model> loaded = load_model(a.model);
  auto* model = dynamic_cast<DecoderModel*>(loaded.get());
  if (!model) fail(a.model, "model", "not a decoder model Kite can quantize");
  auto tok = load_tokenizer_for(a.model);
  o.validate(model->config(), /*check_calibration=*/false);
  if (o.needs_calibration()) {
    if (a.calib.empty())
      fail("--calib", "calib", "{} needs calibration text; give --calib FILE (plain UTF-8 text)", a.method);
    const std::string text = read_text(a.calib);
    if (text.find_first_not_of(" \t\r\n") == std::string::npos)
      fail(a.calib, "calib", "the calibration file is empty; give representative text");
    o.calib_tokens = tok->encode(text, false);
  }
  o.validate(model->config());  // before any work, so bad options leave nothing behind
  Progress bar;
  o.progress = [&](const std::string& what, int64_t done, int64_t total) { bar.update(what, done, total); };
  QuantizeReport report = quantize_model(*model, o);

  // Written to a scratch directory beside the target and renamed at the
  // end: a failure leaves no partial output.
  const fs::path out = fs::absolute(a.out);
  const fs::path tmp = out.parent_path() / (out.filename().string() + ".partial-" + std::to_string(getpid()));
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    save_quantized_checkpoint(*model, a.model, tmp.string(), o, report);
    if (fs::exists(out, ec)) fs::remove(out);
    fs::rename(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "quantized %zu linears with %s in %.1f s (%lld calibration tokens) -> %s\n",
               report.linears.size(), a.method.c_str(), secs, (long long)report.calib_tokens, a.out.c_str());
  return 0;
}

}  // namespace

Run add_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* c = app.add_subcommand("quantize", "Post-training quantization into a checkpoint other tools load too");
  c->add_option("--model,-m", a->model, "Unquantized Hugging Face model directory")->required();
  c->add_option("--out,-o", a->out, "Output directory (must not exist or be empty)")->required();
  c->add_option("--method", a->method,
                "int8 (W8A16 per channel), w8a8 (INT8 weights and per-token activations), int4 (group RTN), nf4 "
                "(bitsandbytes), fp8 (E4M3), gptq, awq")
      ->required();
  c->add_option("--bits", a->bits, "Bits: gptq 4 or 8; the others have one width (0 = the method's)");
  c->add_option("--group-size,-g", a->group,
                "Group size along the input dimension (-1 = per channel; 0 = the method's default: int4/gptq/awq "
                "128, nf4 64)");
  c->add_flag("--asym", a->asym, "int4/gptq: asymmetric groups with zero points");
  c->add_flag("--act-order,--desc-act", a->act_order, "gptq: quantize columns in order of decreasing Hessian diagonal");
  c->add_option("--damp", a->damp, "gptq: dampening, a fraction of the mean Hessian diagonal")->capture_default_str();
  c->add_flag("--fp8-per-tensor", a->fp8_per_tensor, "fp8: one weight scale per tensor instead of per channel");
  c->add_flag("--fp8-static", a->fp8_static,
              "fp8: static activation scales calibrated per layer instead of dynamic per-token scales");
  c->add_flag("--kv-cache-fp8", a->kv_fp8, "Calibrate per-layer FP8 scales for the K and V cache");
  c->add_option("--smoothquant-alpha", a->sq_alpha,
                "w8a8: migrate activation outliers into the weights with this alpha (0 = off, 0.5 typical)")
      ->capture_default_str();
  c->add_flag("--no-double-quant", a->no_double_quant, "nf4: keep the block absmax values in F32");
  c->add_option("--calib", a->calib, "Calibration text (UTF-8) for gptq, awq, static fp8, SmoothQuant, KV scales");
  c->add_option("--calib-samples", a->samples, "Calibration samples")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--calib-seqlen", a->seqlen, "Tokens per calibration sample")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  c->add_option("--seed", a->seed, "Seed for picking calibration samples")->capture_default_str();
  c->add_option("--overrides", a->overrides,
                "YAML: module pattern -> {method, bits, group_size, sym} or skip (e.g. 'lm_head: skip', "
                "'*.down_proj: {bits: 8}')");
  return [a] { return run_quantize(*a); };
}

}  // namespace kite::cli
