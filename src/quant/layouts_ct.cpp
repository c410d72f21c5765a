// compressed-tensors checkpoints (llm-compressor; read by vLLM and by
// transformers through the compressed-tensors package):
//   float-quantized  weight F8_E4M3 [out, in]; weight_scale [out, 1]
//                    (channel) or [1] (tensor); input_scale [1] for static
//                    activations. W = fp8(q) * s.
//   int-quantized    weight I8 [out, in]; weight_scale [out, 1] or [out, G];
//                    weight_g_idx I32 [in] with actorder. W = q * s.
//   pack-quantized   weight_packed I32 [out, ceil(in / p)], p = 32 / bits:
//                    the signed code q stored as q + 2^(bits-1) in word
//                    (o, i / p) at bit bits * (i % p); weight_shape I64 [2];
//                    weight_scale [out, G]; weight_zero_point I32
//                    [ceil(out / p), G] (asymmetric only; the same packing
//                    along out: zero of (o, g) in word (o / p, g));
//                    weight_g_idx I32 [in]. W = (q - zp) * s.
// Scale dtypes are whatever the model used (BF16 / F16 / F32); Kite writes F32.
#include <cmath>

#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant {

using detail::maybe;
using detail::need;

namespace {

constexpr std::initializer_list<DType> kFloat = {DType::F32, DType::BF16, DType::F16};

void check_scale_dtype(DType d, const std::string& src) {
  if (!dtype_is_float(d) || d == DType::F8_E4M3)
    fail(src, "weight_scale", "scale dtype {} is not F32, BF16 or F16", dtype_name(d));
}

// A scalar scale stored as [] or [1].
std::optional<float> scalar(const TensorGetter& get, const std::string& name, const std::string& source) {
  std::optional<Tensor> t = maybe(get, name, source, kFloat, {});
  if (!t) return std::nullopt;
  if (t->numel() != 1 || t->ndim() > 1) fail(source, name, "expected a scalar ([] or [1]), got {}", t->shape_str());
  const float v = t->to_floats()[0];
  if (!std::isfinite(v) || v <= 0) fail(source, name, "expected a positive finite scale, got {}", v);
  return v;
}

// A zero point that must be 0 everywhere (symmetric schemes).
void expect_zero_points(const TensorGetter& get, const std::string& source) {
  std::optional<Tensor> zp =
      maybe(get, "weight_zero_point", source, {DType::I8, DType::I32, DType::F8_E4M3, DType::F32, DType::BF16}, {});
  if (!zp) return;
  const std::vector<float> v = zp->to_floats();
  for (size_t k = 0; k < v.size(); ++k)
    if (v[k] != 0.0f)
      fail(source, "weight_zero_point", "entry {} is {}; Kite's 8-bit weights are symmetric (zero point 0)", k, v[k]);
}

// weight_g_idx -> perm (empty when absent, all -1 as compressed-tensors
// initializes it, or the identity).
std::vector<int32_t> read_g_idx(const TensorGetter& get, int64_t in, int64_t group, const std::string& source) {
  std::optional<Tensor> gi = maybe(get, "weight_g_idx", source, {DType::I32, DType::I64}, {in});
  if (!gi) return {};
  const std::vector<int64_t> v = detail::int_values(*gi);
  bool unset = true;
  for (int64_t x : v) unset = unset && x == -1;
  if (unset) return {};
  std::vector<int32_t> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] >= in / group)
      fail(source, "weight_g_idx", "entry {} is {}, outside [0, {})", i, v[i], in / group);
    g[i] = int32_t(v[i]);
  }
  return g_idx_to_perm(g, group, source, "weight_g_idx");
}

Tensor g_idx_tensor(const std::vector<int32_t>& perm, int64_t group) {
  const std::vector<int32_t> g = perm_to_g_idx(perm, group);
  Tensor t = Tensor::empty({int64_t(g.size())}, DType::I32);
  std::copy(g.begin(), g.end(), t.data_as<int32_t>());
  return t;
}

}  // namespace

// ---- float-quantized ----------------------------------------------------------

TensorMap to_ct_fp8(const QuantWeight& w, DType scale_dtype) {
  const std::string src = "to_ct_fp8";
  detail::check_weight(w, {QuantScheme::Fp8}, {ActQuant::None, ActQuant::Fp8Token, ActQuant::Fp8Static}, src);
  check_scale_dtype(scale_dtype, src);
  const std::vector<float> s = w.scales.to_floats();
  const Shape scale_shape = s.size() == size_t(w.out) ? Shape{w.out, 1} : Shape{1};
  TensorMap m = {{"weight", w.qdata.to(kCpu)},
                 {"weight_scale", detail::float_tensor(scale_shape, s, scale_dtype, src, "weight_scale")}};
  if (w.act == ActQuant::Fp8Static) {
    if (!std::isfinite(w.input_scale) || w.input_scale <= 0)
      fail(src, "input_scale", "static FP8 activations need a positive input scale, got {}", w.input_scale);
    m.emplace_back("input_scale", detail::float_tensor({1}, {w.input_scale}, scale_dtype, src, "input_scale"));
  }
  return m;
}

QuantWeight from_ct_fp8(const TensorGetter& get, int64_t out, int64_t in, ActQuant act, const std::string& source) {
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  if (act != ActQuant::None && act != ActQuant::Fp8Token && act != ActQuant::Fp8Static)
    fail(source, "input_activations", "FP8 weights take FP8 (or no) activation quantization");
  QuantWeight w;
  w.scheme = QuantScheme::Fp8;
  w.out = out;
  w.in = in;
  w.act = act;
  w.qdata = need(get, "weight", source, {DType::F8_E4M3}, {out, in});
  Tensor sc = need(get, "weight_scale", source, kFloat, {});
  const Shape& sh = sc.shape();
  const bool channel = (sh == Shape{out, 1}) || (sh == Shape{out});
  const bool tensor = sh.empty() || sh == Shape{1} || sh == Shape{1, 1};
  if (!channel && !tensor)
    fail(source, "weight_scale", "expected [{}, 1] (per channel) or [1] (per tensor), got {}{}", out, sc.shape_str(),
         sh.size() == 2 ? " (block-wise FP8 scales are not supported)" : "");
  std::vector<float> s = sc.to_floats();
  w.scales = Tensor::from_floats({int64_t(s.size())}, s);
  expect_zero_points(get, source);
  if (act == ActQuant::Fp8Static) {
    std::optional<float> is = scalar(get, "input_scale", source);
    if (!is) fail(source, "input_scale", "missing; static FP8 activations need the calibrated scale");
    w.input_scale = *is;
  }
  w.validate(source);
  return w;
}

// ---- int-quantized --------------------------------------------------------------

TensorMap to_ct_int8(const QuantWeight& w, DType scale_dtype) {
  const std::string src = "to_ct_int8";
  detail::check_weight(w, {QuantScheme::Int8}, {ActQuant::None, ActQuant::Int8Token}, src);
  check_scale_dtype(scale_dtype, src);
  const std::vector<uint8_t> codes = detail::codes_in_input_order(w, src);
  Tensor q = Tensor::empty({w.out, w.in}, DType::I8);
  for (size_t k = 0; k < codes.size(); ++k) q.data_as<int8_t>()[k] = int8_t(int(codes[k]) - 128);
  const int64_t groups = w.in / w.group;
  TensorMap m = {
      {"weight", q},
      {"weight_scale", detail::float_tensor({w.out, groups}, w.scales.to_floats(), scale_dtype, src, "weight_scale")}};
  const std::vector<int32_t> perm = detail::perm_values(w, src);
  if (!perm.empty()) m.emplace_back("weight_g_idx", g_idx_tensor(perm, w.group));
  return m;
}

QuantWeight from_ct_int8(const TensorGetter& get, int64_t out, int64_t in, int64_t group, ActQuant act,
                         const std::string& source) {
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  if (act != ActQuant::None && act != ActQuant::Int8Token)
    fail(source, "input_activations", "int8 weights take dynamic per-token int8 (or no) activation quantization");
  const int64_t gs = detail::resolve_group(group, in, source);
  const int64_t groups = in / gs;
  Tensor q = need(get, "weight", source, {DType::I8}, {out, in});
  Tensor sc = need(get, "weight_scale", source, kFloat, {});
  std::vector<float> s = sc.to_floats();
  const Shape& sh = sc.shape();
  if (sh == Shape{out, groups} || (groups == 1 && sh == Shape{out})) {
    // per channel / group
  } else if (groups == 1 && (sh.empty() || sh == Shape{1} || sh == Shape{1, 1})) {
    s.assign(size_t(out), s[0]);  // per tensor: the same scale for every row
  } else {
    fail(source, "weight_scale", "expected [{}, {}]{}, got {}", out, groups, groups == 1 ? " or [1]" : "",
         sc.shape_str());
  }
  expect_zero_points(get, source);
  const std::vector<int32_t> perm = read_g_idx(get, in, gs, source);
  std::vector<uint8_t> codes(size_t(out * in));
  for (size_t k = 0; k < codes.size(); ++k) codes[k] = uint8_t(int(q.data_as<const int8_t>()[k]) + 128);
  QuantWeight w = detail::make_int_weight(8, out, in, gs, codes, std::move(s), {}, perm);
  w.act = act;
  w.validate(source);
  return w;
}

// ---- pack-quantized ---------------------------------------------------------------

TensorMap to_ct_packed(const QuantWeight& w, bool symmetric, DType scale_dtype) {
  const std::string src = "to_ct_packed";
  detail::check_weight(w, {QuantScheme::Int4, QuantScheme::Int8}, {ActQuant::None}, src);
  check_scale_dtype(scale_dtype, src);
  const int bits = w.scheme == QuantScheme::Int4 ? 4 : 8;
  const int64_t p = 32 / bits, out = w.out, in = w.in, groups = in / w.group;
  const int64_t words_in = (in + p - 1) / p, words_out = (out + p - 1) / p;
  std::vector<int> zeros;
  if (bits == 4) {
    zeros = detail::integral_zeros(w, symmetric ? 8 : 0, symmetric ? 8 : 15, src,
                                   symmetric ? " (symmetric pack-quantized weights have zero 8)" : "");
  } else if (!symmetric) {
    fail(src, "symmetric", "Kite's Int8 weights are symmetric; write them with symmetric = true");
  }
  const std::vector<uint8_t> codes = detail::codes_in_input_order(w, src);  // q + 2^(bits-1) already
  std::vector<uint32_t> packed(size_t(out * words_in), 0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      packed[size_t(o * words_in + i / p)] |= uint32_t(codes[size_t(o * in + i)]) << (bits * (i % p));
  Tensor shape = Tensor::empty({2}, DType::I64);
  shape.data_as<int64_t>()[0] = out;
  shape.data_as<int64_t>()[1] = in;
  TensorMap m = {
      {"weight_packed", detail::int32_tensor({out, words_in}, packed)},
      {"weight_shape", shape},
      {"weight_scale", detail::float_tensor({out, groups}, w.scales.to_floats(), scale_dtype, src, "weight_scale")}};
  if (!symmetric) {
    std::vector<uint32_t> zp(size_t(words_out * groups), 0);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t g = 0; g < groups; ++g)
        zp[size_t((o / p) * groups + g)] |= uint32_t(zeros[size_t(o * groups + g)]) << (bits * (o % p));
    m.emplace_back("weight_zero_point", detail::int32_tensor({words_out, groups}, zp));
  }
  const std::vector<int32_t> perm = detail::perm_values(w, src);
  if (!perm.empty()) m.emplace_back("weight_g_idx", g_idx_tensor(perm, w.group));
  return m;
}

QuantWeight from_ct_packed(const TensorGetter& get, int64_t out, int64_t in, int bits, int64_t group, bool symmetric,
                           const std::string& source) {
  if (bits != 4 && bits != 8) fail(source, "num_bits", "{}-bit pack-quantized weights are not supported", bits);
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  if (bits == 4 && in % 2) fail(source, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte", in);
  if (bits == 8 && !symmetric)
    fail(source, "symmetric", "asymmetric 8-bit weights are not supported (Kite's Int8 is symmetric)");
  const int64_t p = 32 / bits, words_in = (in + p - 1) / p, words_out = (out + p - 1) / p;
  const int64_t gs = detail::resolve_group(group, in, source);
  const int64_t groups = in / gs;
  const uint32_t mask = (1u << bits) - 1;
  Tensor packed = need(get, "weight_packed", source, {DType::I32}, {out, words_in});
  if (std::optional<Tensor> shape = maybe(get, "weight_shape", source, {DType::I64, DType::I32}, {2})) {
    const std::vector<int64_t> v = detail::int_values(*shape);
    if (v[0] != out || v[1] != in)
      fail(source, "weight_shape", "says [{}, {}], expected [{}, {}]", v[0], v[1], out, in);
  }
  Tensor sc = need(get, "weight_scale", source, kFloat, {out, groups});
  std::vector<float> zeros(size_t(out * groups), float(1 << (bits - 1)));
  if (!symmetric) {
    Tensor zp = need(get, "weight_zero_point", source, {DType::I32}, {words_out, groups});
    const uint32_t* z = zp.data_as<const uint32_t>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t g = 0; g < groups; ++g)
        zeros[size_t(o * groups + g)] = float((z[(o / p) * groups + g] >> (bits * (o % p))) & mask);
  }
  const std::vector<int32_t> perm = read_g_idx(get, in, gs, source);
  std::vector<uint8_t> codes(size_t(out * in));
  const uint32_t* words = packed.data_as<const uint32_t>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      codes[size_t(o * in + i)] = uint8_t((words[o * words_in + i / p] >> (bits * (i % p))) & mask);
  if (bits == 8) zeros.clear();
  QuantWeight w = detail::make_int_weight(bits, out, in, gs, codes, sc.to_floats(), std::move(zeros), perm);
  w.validate(source);
  return w;
}

// ---- KV-cache scales --------------------------------------------------------------

TensorMap to_ct_kv_scales(float k_scale, float v_scale) {
  for (float s : {k_scale, v_scale})
    if (!std::isfinite(s) || s <= 0) fail("to_ct_kv_scales", "k_scale", "expected positive finite scales, got {}", s);
  return {{"k_scale", Tensor::from_floats({1}, {k_scale})}, {"v_scale", Tensor::from_floats({1}, {v_scale})}};
}

std::optional<std::pair<float, float>> from_ct_kv_scales(const TensorGetter& get, const std::string& source) {
  std::optional<float> k = scalar(get, "k_scale", source), v = scalar(get, "v_scale", source);
  if (!k && !v) {
    k = scalar(get, "k_proj.output_scale", source);
    v = scalar(get, "v_proj.output_scale", source);
  }
  if (!k && !v) return std::nullopt;
  if (!k || !v) fail(source, k ? "v_scale" : "k_scale", "missing; FP8 KV caches need both k_scale and v_scale");
  return std::pair{*k, *v};
}

}  // namespace kite::quant
