#include "quantize/quantize.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "core/error.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/layouts.h"
#include "quant/rtn.h"
#include "quant/smoothquant.h"

namespace kite {

namespace {

const char* kSource = "kite quantize";

int default_bits(QuantMethod m) {
  switch (m) {
    case QuantMethod::Int8:
    case QuantMethod::W8A8:
    case QuantMethod::Fp8: return 8;
    default: return 4;
  }
}

int64_t default_group(QuantMethod m, int bits) {
  switch (m) {
    case QuantMethod::Int4:
    case QuantMethod::Awq: return 128;
    case QuantMethod::Gptq: return bits == 8 ? -1 : 128;
    case QuantMethod::Nf4: return 64;
    default: return -1;  // per channel
  }
}

// W[:, j] *= s[j] for a dense F32 [out, in] weight.
void scale_columns(Tensor& w, const std::vector<float>& s) {
  float* p = w.data_as<float>();
  const int64_t out = w.dim(0), in = w.dim(1);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < in; ++j) p[o * in + j] *= s[size_t(j)];
}
// W[o, :] /= s[o].
void divide_rows(Tensor& w, const std::vector<float>& s) {
  float* p = w.data_as<float>();
  const int64_t out = w.dim(0), in = w.dim(1);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < in; ++j) p[o * in + j] /= s[size_t(o)];
}
// A norm weight divided by s (returned as F32).
Tensor divide_norm(const Tensor& norm, const std::vector<float>& s) {
  std::vector<float> v = norm.to_floats();
  for (size_t i = 0; i < v.size(); ++i) v[i] /= s[i];
  return Tensor::from_floats(norm.shape(), v);
}

Tensor as_f32(const QuantWeight& q) {
  KITE_CHECK(!q.quantized(), "{} weight is already quantized", quant_scheme_name(q.scheme));
  return dequantize(q);  // dense -> F32 copy [out, in]
}

// Rows of x kept for AWQ's searches: every k-th row up to `max_rows`.
struct RowSampler {
  explicit RowSampler(int64_t max) : max_rows(max) {}
  int64_t max_rows;
  std::vector<float> rows;
  int64_t in = 0, seen = 0;
  void add(const Tensor& x) {
    in = x.dim(1);
    std::vector<float> f = x.to_floats();
    for (int64_t r = 0; r < x.dim(0); ++r, ++seen)
      if (int64_t(rows.size()) / in < max_rows && seen % 4 == 0)
        rows.insert(rows.end(), f.begin() + r * in, f.begin() + (r + 1) * in);
  }
  Tensor tensor() const { return Tensor::from_floats({int64_t(rows.size()) / in, in}, rows); }
};

void fill_stats(LinearReport& r, const QuantWeight& q) {
  if (q.scales.defined()) {
    std::vector<float> s = q.scales.to_floats();
    double sum = 0;
    r.scale_min = 1e300;
    r.scale_max = -1e300;
    for (float v : s) {
      r.scale_min = std::min(r.scale_min, double(v));
      r.scale_max = std::max(r.scale_max, double(v));
      sum += v;
    }
    r.scale_mean = s.empty() ? 0 : sum / double(s.size());
  }
  if (q.zeros.defined()) {
    std::vector<float> z = q.zeros.to_floats();
    r.zero_min = *std::min_element(z.begin(), z.end());
    r.zero_max = *std::max_element(z.begin(), z.end());
  }
}

}  // namespace

std::string_view quant_method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::Int8: return "int8";
    case QuantMethod::W8A8: return "w8a8";
    case QuantMethod::Int4: return "int4";
    case QuantMethod::Nf4: return "nf4";
    case QuantMethod::Fp8: return "fp8";
    case QuantMethod::Gptq: return "gptq";
    case QuantMethod::Awq: return "awq";
  }
  return "?";
}

QuantMethod parse_quant_method(const std::string& name, const std::string& source) {
  for (QuantMethod m : {QuantMethod::Int8, QuantMethod::W8A8, QuantMethod::Int4, QuantMethod::Nf4, QuantMethod::Fp8,
                        QuantMethod::Gptq, QuantMethod::Awq})
    if (name == quant_method_name(m)) return m;
  fail(source, "method", "unknown method '{}'; expected one of int8, w8a8, int4, nf4, fp8, gptq, awq", name);
}

bool glob_match(std::string_view p, std::string_view s) {
  size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi;
      ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

std::vector<QuantOverride> load_quant_overrides(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    fail(path, "overrides", "cannot read the file (expected a YAML mapping of module patterns)");
  } catch (const YAML::Exception& e) {
    fail(path, fmt::format("line {}", e.mark.line + 1), "YAML syntax error: {}", e.msg);
  }
  if (!root.IsMap())
    fail(path, "line 1", "expected a mapping: module pattern -> {{method, bits, group_size, sym}} or skip");
  std::vector<QuantOverride> out;
  for (const auto& kv : root) {
    QuantOverride o;
    o.line = kv.first.Mark().line + 1;
    const std::string where = fmt::format("line {}", o.line);
    try {
      o.pattern = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      if (v.IsScalar()) {
        if (v.as<std::string>() != "skip")
          fail(path, where, "'{}': expected 'skip' or a mapping of method/bits/group_size/sym", o.pattern);
        o.skip = true;
      } else if (v.IsMap()) {
        for (const auto& f : v) {
          const std::string key = f.first.as<std::string>();
          const std::string at = fmt::format("line {}", f.first.Mark().line + 1);
          if (key == "method") {
            const std::string m = f.second.as<std::string>();
            if (m == "skip" || m == "none" || m == "bf16")
              o.skip = true;
            else
              o.method = parse_quant_method(m, path + " " + at);
          } else if (key == "bits") {
            o.bits = f.second.as<int>();
          } else if (key == "group_size" || key == "group") {
            o.group = f.second.as<int64_t>();
          } else if (key == "sym" || key == "symmetric") {
            o.symmetric = f.second.as<bool>();
          } else if (key == "skip") {
            o.skip = f.second.as<bool>();
          } else {
            fail(path, at, "unknown key '{}'; expected method, bits, group_size, sym or skip", key);
          }
        }
      } else {
        fail(path, where, "'{}': expected 'skip' or a mapping", o.pattern);
      }
    } catch (const YAML::Exception& e) {
      fail(path, fmt::format("line {}", e.mark.line + 1), "bad value: {}", e.msg);
    }
    out.push_back(std::move(o));
  }
  return out;
}

ModuleQuant QuantizeOptions::module(const std::string& name) const {
  ModuleQuant m;
  m.method = method;
  m.symmetric = symmetric;
  int b = bits;       // 0: the method's default
  int64_t g = group;  // 0: the method's default
  // The lm_head stays dense unless an override names it.
  m.skip = name == "lm_head";
  for (const QuantOverride& o : overrides) {
    if (!glob_match(o.pattern, name)) continue;
    if (o.skip) {
      m.skip = true;
      continue;
    }
    m.skip = false;
    if (o.method) m.method = *o.method;
    if (o.bits) b = *o.bits;
    if (o.group) g = *o.group;
    if (o.symmetric) m.symmetric = *o.symmetric;
  }
  m.bits = b ? b : default_bits(m.method);
  m.group = g ? g : default_group(m.method, m.bits);
  if (m.method == QuantMethod::Awq) m.symmetric = false;  // AWQ always has zero points
  return m;
}

bool QuantizeOptions::needs_calibration() const {
  if (kv_cache_fp8 || (method == QuantMethod::Fp8 && fp8_static_act) ||
      (method == QuantMethod::W8A8 && smoothquant_alpha > 0) || method == QuantMethod::Gptq ||
      method == QuantMethod::Awq)
    return true;
  for (const QuantOverride& o : overrides)
    if (o.method == QuantMethod::Gptq || o.method == QuantMethod::Awq) return true;
  return false;
}

void QuantizeOptions::validate(const ModelConfig& c, bool check_calibration) const {
  if (smoothquant_alpha < 0 || smoothquant_alpha > 1)
    fail(kSource, "smoothquant_alpha", "{} is invalid; expected a value in [0, 1]", smoothquant_alpha);
  if (damp <= 0 || damp >= 1) fail(kSource, "damp", "{} is invalid; expected a value in (0, 1)", damp);
  if (check_calibration && needs_calibration()) {
    if (calib_samples < 1 || calib_seqlen < 2)
      fail(kSource, "calib", "{} samples of {} tokens; expected at least 1 sample of 2 tokens", calib_samples,
           calib_seqlen);
    if (int64_t(calib_tokens.size()) < calib_seqlen)
      fail(kSource, "calib", "the calibration text has {} tokens, fewer than one sample of {}; give a longer text",
           calib_tokens.size(), calib_seqlen);
  }
  // Every linear's settings must be valid for its shape.
  const int64_t d = c.hidden_size, q_dim = c.num_heads * c.head_dim, ffn = c.intermediate_size;
  auto check = [&](const std::string& name, int64_t in) {
    ModuleQuant m = module(name);
    if (m.skip) return;
    const bool awq = m.method == QuantMethod::Awq;
    if ((m.method == QuantMethod::Gptq && m.bits != 4 && m.bits != 8) ||
        ((m.method == QuantMethod::Int4 || m.method == QuantMethod::Nf4 || awq) && m.bits != 4) ||
        ((m.method == QuantMethod::Int8 || m.method == QuantMethod::W8A8 || m.method == QuantMethod::Fp8) &&
         m.bits != 8))
      fail(kSource, "bits", "{} bits is not available for {} ({}); gptq takes 4 or 8, int8/w8a8/fp8 8, the rest 4",
           m.bits, quant_method_name(m.method), name);
    if (m.group == 0 || m.group < -1)
      fail(kSource, "group_size", "{} is invalid for {}; expected -1 (per channel) or a positive size", m.group, name);
    if (m.group > 0 && in % m.group)
      fail(kSource, "group_size", "{} does not divide the input dimension {} of {}; choose a divisor", m.group, in,
           name);
    if (m.method == QuantMethod::Nf4 && m.group != 64 && m.group != 32 && m.group != 128)
      fail(kSource, "group_size", "NF4 blocks of {}; expected 64 (bitsandbytes), 32 or 128", m.group);
    if ((m.method == QuantMethod::W8A8 || m.method == QuantMethod::Fp8) && m.group != -1)
      fail(kSource, "group_size", "{} uses per-channel scales; drop the group size for {}", quant_method_name(m.method),
           name);
    if (name == "lm_head" && (m.method == QuantMethod::Gptq || m.method == QuantMethod::Awq))
      fail(kSource, "lm_head", "lm_head takes round-to-nearest methods only (int8, int4, nf4, fp8)");
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    check(p + "self_attn.q_proj", d);
    check(p + "self_attn.k_proj", d);
    check(p + "self_attn.v_proj", d);
    check(p + "self_attn.o_proj", q_dim);
    check(p + "mlp.gate_proj", d);
    check(p + "mlp.up_proj", d);
    check(p + "mlp.down_proj", ffn);
  }
  check("lm_head", d);
}

namespace {

class LayerQuantizer {
 public:
  LayerQuantizer(DecoderModel& m, const QuantizeOptions& o, QuantizeReport& r) : model_(m), opt_(o), report_(r) {}

  void run() {
    const ModelConfig& c = model_.config();
    if (opt_.needs_calibration()) make_calibration();
    for (int64_t l = 0; l < c.num_layers; ++l) {
      quantize_layer(l);
      if (!xs_.empty() && l + 1 < c.num_layers)
        for (Tensor& x : xs_) model_.run_layer(l, x, {});  // inputs of the next layer, through the quantized one
      if (opt_.progress) opt_.progress("layers", l + 1, c.num_layers);
    }
    ModuleQuant head = opt_.module("lm_head");
    if (!head.skip) {
      ModelWeights& mw = model_.weights();
      const QuantWeight w =
          mw.lm_head_tied() ? QuantWeight::from_dense(mw.tensor("model.embed_tokens.weight")) : mw.linear("lm_head");
      mw.linears["lm_head"] = quantize_one("lm_head", head, as_f32(w), nullptr, nullptr);
      model_.rebuild_lm_head();
    }
  }

 private:
  void make_calibration() {
    const std::vector<int32_t>& t = opt_.calib_tokens;
    std::mt19937_64 rng(opt_.seed);
    const int64_t span = int64_t(t.size()) - opt_.calib_seqlen;
    for (int64_t s = 0; s < opt_.calib_samples; ++s) {
      const int64_t at = span > 0 ? int64_t(rng() % uint64_t(span + 1)) : 0;
      std::vector<int32_t> w(t.begin() + at, t.begin() + at + opt_.calib_seqlen);
      w[0] = model_.config().bos_token_id.value_or(1);  // BOS first, as every prompt starts
      xs_.push_back(model_.embed(w));
      report_.calib_tokens += opt_.calib_seqlen;
    }
  }

  // Runs layer l over every calibration sample (on copies) and hands the
  // input of each observed module to `sink`.
  void capture(int64_t l, const std::function<void(std::string_view, const Tensor&)>& sink) {
    for (const Tensor& x0 : xs_) {
      Tensor x = Tensor::empty(x0.shape(), DType::F32, x0.device());  // run_layer works in place
      x.copy_from(x0);
      model_.run_layer(l, x, sink);
    }
  }

  QuantWeight quantize_one(const std::string& name, const ModuleQuant& m, const Tensor& w, const Tensor* hessian,
                           const Tensor* awq_x, double* gptq_loss = nullptr, ActQuant act = ActQuant::None,
                           float input_scale = 0) {
    QuantWeight q;
    switch (m.method) {
      case QuantMethod::Int8:
      case QuantMethod::W8A8:
        q = quant::quantize_rtn(
            w,
            quant::QuantSpec{
                .scheme = QuantScheme::Int8, .bits = 8, .group = m.group > 0 ? m.group : w.dim(1), .symmetric = true});
        break;
      case QuantMethod::Int4:
        q = quant::quantize_rtn(w, quant::QuantSpec{.scheme = QuantScheme::Int4,
                                                    .bits = 4,
                                                    .group = m.group > 0 ? m.group : w.dim(1),
                                                    .symmetric = m.symmetric});
        break;
      case QuantMethod::Nf4:
        q = quant::quantize_rtn(w, quant::QuantSpec{.scheme = QuantScheme::Nf4, .bits = 4, .group = m.group});
        if (opt_.nf4_double_quant) {  // keep the absmax values bitsandbytes' 8-bit form holds
          std::vector<float> a = quant::bnb_double_quant_roundtrip(q.scales.to_floats());
          q.scales = Tensor::from_floats(q.scales.shape(), a);
        }
        break;
      case QuantMethod::Fp8:
        q = quant::quantize_rtn(w, quant::QuantSpec{.scheme = QuantScheme::Fp8,
                                                    .bits = 8,
                                                    .group = 0,
                                                    .symmetric = true,
                                                    .per_channel = !opt_.fp8_per_tensor});
        break;
      case QuantMethod::Gptq: {
        KITE_CHECK(hessian, "GPTQ without a Hessian for {}", name);
        quant::GptqOptions g;
        g.bits = m.bits;
        g.group = m.group;
        g.symmetric = m.symmetric || m.bits == 8;
        g.act_order = opt_.act_order;
        g.damp = opt_.damp;
        quant::GptqStats st;
        q = quant::gptq_quantize(w, *hessian, g, &st);
        if (gptq_loss) *gptq_loss = st.loss;
        break;
      }
      case QuantMethod::Awq: {
        KITE_CHECK(awq_x, "AWQ without activations for {}", name);
        quant::AwqOptions a;
        a.group = m.group;
        q = quant::awq_quantize(w, *awq_x, a);
        break;
      }
    }
    q.act = act;
    q.input_scale = input_scale;
    LinearReport r;
    r.name = name;
    r.quant = m;
    r.bits_per_weight = q.bits_per_weight();
    const quant::QuantError e = quant::quant_error(w, q);
    r.weight_rel_error = e.rel_fro;
    r.weight_max_error = e.max_abs;
    fill_stats(r, q);
    if (gptq_loss) r.gptq_loss = *gptq_loss;
    report_.linears.push_back(r);
    return q;
  }

  // One stage: linears sharing one input, quantized together.
  void quantize_stage(int64_t l, const std::vector<std::string>& names) {
    ModelWeights& mw = model_.weights();
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    auto layer_linear = [&](const std::string& n) -> QuantWeight& { return mw.linear(prefix + n); };
    // down_proj's scale migration folds into up_proj: decide it while
    // gate/up are still as the earlier stages left them.
    if (names[0] == "mlp.gate_proj") migrate_down(l);
    std::vector<ModuleQuant> mq;
    bool need_h = false, need_x = false, need_absmax = false;
    for (const std::string& n : names) {
      mq.push_back(opt_.module(prefix + n));
      const ModuleQuant& m = mq.back();
      if (m.skip) continue;
      need_h |= m.method == QuantMethod::Gptq;
      need_x |= m.method == QuantMethod::Awq;
      need_absmax |= (m.method == QuantMethod::Fp8 && opt_.fp8_static_act) ||
                     (m.method == QuantMethod::W8A8 && opt_.smoothquant_alpha > 0);
    }
    const bool kv = opt_.kv_cache_fp8 && names[0] == "self_attn.o_proj";
    const int64_t in = layer_linear(names[0]).in;
    std::optional<quant::HessianAccumulator> hacc;
    if (need_h) hacc.emplace(in);
    RowSampler rows(512);
    quant::ActAbsMaxAccumulator absmax(in);
    float k_max = 0, v_max = 0;
    if (need_h || need_x || need_absmax || kv) {
      capture(l, [&](std::string_view name, const Tensor& x) {
        if (name == names[0]) {
          if (hacc) hacc->add(x);
          if (need_x) rows.add(x);
          if (need_absmax) absmax.add(x);
        } else if (kv && (name == "k_cache" || name == "v_cache")) {
          float& mx = name == "k_cache" ? k_max : v_max;
          for (float f : x.to_floats()) mx = std::max(mx, std::abs(f));
        }
      });
    }
    if (kv) {
      report_.k_scales.push_back(k_max / 448.0f);
      report_.v_scales.push_back(v_max / 448.0f);
    }
    Tensor hessian = hacc ? hacc->hessian() : Tensor();
    Tensor x_awq = need_x ? rows.tensor() : Tensor();

    // Scale migration (AWQ search, SmoothQuant) into the preceding norm.
    std::vector<Tensor> ws;
    for (const std::string& n : names) ws.push_back(as_f32(layer_linear(n)));
    Tensor* norm = names[0] == "self_attn.q_proj" ? &mw.tensor(prefix + "input_layernorm.weight")
                   : names[0] == "mlp.gate_proj"  ? &mw.tensor(prefix + "post_attention_layernorm.weight")
                                                  : nullptr;
    std::vector<float> act_absmax = need_absmax ? absmax.absmax().to_floats() : std::vector<float>{};
    std::vector<float> s;
    if (norm && (need_x || (need_absmax && opt_.method == QuantMethod::W8A8))) {
      std::vector<const Tensor*> wp;
      for (const Tensor& w : ws) wp.push_back(&w);
      Tensor st = need_x ? quant::awq_search_scales(wp, x_awq, quant::AwqOptions{.group = mq[0].group})
                         : quant::smooth_factors(absmax.absmax(), wp, opt_.smoothquant_alpha);
      s = st.to_floats();
      *norm = divide_norm(*norm, s);
      for (Tensor& w : ws) scale_columns(w, s);
      if (need_x) {  // the searched activations are divided by s too
        std::vector<float> xv = x_awq.to_floats();
        for (size_t i = 0; i < xv.size(); ++i) xv[i] /= s[i % s.size()];
        x_awq = Tensor::from_floats(x_awq.shape(), xv);
      }
      for (size_t i = 0; i < act_absmax.size(); ++i) act_absmax[i] /= s[i];
    }
    float input_scale = 0;
    if (need_absmax) input_scale = *std::max_element(act_absmax.begin(), act_absmax.end()) / 448.0f;
    for (size_t i = 0; i < names.size(); ++i) {
      QuantWeight& target = layer_linear(names[i]);
      if (mq[i].skip) {
        target = QuantWeight::from_dense(ws[i]);
        continue;
      }
      ActQuant act = ActQuant::None;
      if (mq[i].method == QuantMethod::W8A8) act = ActQuant::Int8Token;
      if (mq[i].method == QuantMethod::Fp8) act = opt_.fp8_static_act ? ActQuant::Fp8Static : ActQuant::Fp8Token;
      double loss = -1;
      target = quantize_one(prefix + names[i], mq[i], ws[i], hacc ? &hessian : nullptr, need_x ? &x_awq : nullptr,
                            &loss, act, act == ActQuant::Fp8Static ? std::max(input_scale, 1e-12f) : 0.0f);
    }
    model_.rebuild_layer(l);  // the next stage sees this one's quantized weights (and rescaled norm)
  }

  // AWQ / SmoothQuant for down_proj: its input is silu(gate) * up, so a
  // per-channel scale folds into up_proj's rows.
  void migrate_down(int64_t l) {
    ModelWeights& mw = model_.weights();
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string name = p + "mlp.down_proj";
    const ModuleQuant m = opt_.module(name);
    const bool awq = !m.skip && m.method == QuantMethod::Awq;
    const bool sq = !m.skip && m.method == QuantMethod::W8A8 && opt_.smoothquant_alpha > 0;
    if (!awq && !sq) return;
    RowSampler rows(512);
    quant::ActAbsMaxAccumulator absmax(mw.linear(name).in);
    capture(l, [&](std::string_view n, const Tensor& x) {
      if (n != "mlp.down_proj") return;
      if (awq) rows.add(x);
      if (sq) absmax.add(x);
    });
    Tensor down = as_f32(mw.linear(name));
    std::vector<const Tensor*> wp = {&down};
    Tensor st = awq ? quant::awq_search_scales(wp, rows.tensor(), quant::AwqOptions{.group = m.group})
                    : quant::smooth_factors(absmax.absmax(), wp, opt_.smoothquant_alpha);
    std::vector<float> s = st.to_floats();
    Tensor up = as_f32(mw.linear(p + "mlp.up_proj"));
    divide_rows(up, s);
    scale_columns(down, s);
    mw.linear(p + "mlp.up_proj") = QuantWeight::from_dense(up);
    mw.linear(name) = QuantWeight::from_dense(down);
    model_.rebuild_layer(l);
  }

  void quantize_layer(int64_t l) {
    quantize_stage(l, {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"});
    quantize_stage(l, {"self_attn.o_proj"});
    quantize_stage(l, {"mlp.gate_proj", "mlp.up_proj"});
    quantize_stage(l, {"mlp.down_proj"});
  }

  DecoderModel& model_;
  const QuantizeOptions& opt_;
  QuantizeReport& report_;
  std::vector<Tensor> xs_;  // per calibration sample: [seqlen, d], the current layer's input
};

}  // namespace

QuantizeReport quantize_model(DecoderModel& model, const QuantizeOptions& options) {
  options.validate(model.config());
  for (const auto& [name, q] : model.weights().linears)
    if (q.quantized())
      fail(model.path(), "quantization_config",
           "the model is already quantized ({}); start from the unquantized "
           "checkpoint",
           quant_scheme_name(q.scheme));
  auto t0 = std::chrono::steady_clock::now();
  QuantizeReport report;
  LayerQuantizer lq(model, options, report);
  lq.run();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace kite
