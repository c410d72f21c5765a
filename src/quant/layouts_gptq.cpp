// AutoGPTQ / GPTQModel checkpoints (qlinear "cuda"/"exllama" layout):
//   qweight I32 [in / p, out]   p = 32 / bits values per word; input column i
//                               of output o sits in word (i / p, o) at bit
//                               bits * (i % p) (LSB first), unsigned code u
//   qzeros  I32 [G, out / p]    zero of (group g, output o) in word (g, o / p)
//                               at bit bits * (o % p); v1 stores zero - 1
//   scales  F16 [G, out]
//   g_idx   I32 [in]            group of each input column
// W[o, i] = (u - zero[g_idx[i], o]) * scales[g_idx[i], o].
#include <cmath>

#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant {

using detail::need;

namespace {

// v1 <-> v2 as GPTQModel converts them: one add / subtract of the whole word
// (a field "+1" each, carries included).
uint32_t v1_offset(int bits) { return bits == 4 ? 0x11111111u : 0x01010101u; }

}  // namespace

TensorMap to_gptq(const QuantWeight& w, GptqFormat format, DType scale_dtype) {
  const std::string src = "to_gptq";
  detail::check_weight(w, {QuantScheme::Int4, QuantScheme::Int8}, {ActQuant::None}, src);
  if (!dtype_is_float(scale_dtype)) fail(src, "scales", "scale dtype {} is not a float type", dtype_name(scale_dtype));
  const int bits = w.scheme == QuantScheme::Int4 ? 4 : 8;
  const int64_t p = 32 / bits, out = w.out, in = w.in, groups = in / w.group;
  if (in % p || out % p)
    fail(src, "shape", "GPTQ packs {} values per int32 along both dimensions; [{}, {}] is not a multiple of {}", p, out,
         in, p);
  const std::vector<uint8_t> codes = detail::codes_in_input_order(w, src);

  std::vector<uint32_t> qweight(size_t(in / p * out), 0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      qweight[size_t((i / p) * out + o)] |= uint32_t(codes[size_t(o * in + i)]) << (bits * (i % p));

  std::vector<int> zeros;
  if (bits == 4) {
    const int lo = format == GptqFormat::V1 ? 1 : 0;
    zeros = detail::integral_zeros(w, lo, 15, src,
                                   lo ? "; GPTQ v1 stores zero - 1, so zero 0 needs checkpoint_format gptq_v2 (or "
                                        "symmetric quantization)"
                                      : "");
  } else {
    zeros.assign(size_t(out * groups), 128);  // Int8 q in [-128, 127] is u = q + 128 with zero 128
  }
  std::vector<uint32_t> qzeros(size_t(groups * (out / p)), 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t o = 0; o < out; ++o)
      qzeros[size_t(g * (out / p) + o / p)] |= uint32_t(zeros[size_t(o * groups + g)]) << (bits * (o % p));
  }
  if (format == GptqFormat::V1)
    for (uint32_t& word : qzeros) word -= v1_offset(bits);  // every field >= 1: no borrows

  const std::vector<float> s = w.scales.to_floats();  // [out, G]
  std::vector<float> st(size_t(groups * out));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < groups; ++g) st[size_t(g * out + o)] = s[size_t(o * groups + g)];

  const std::vector<int32_t> perm = detail::perm_values(w, src);
  std::vector<int32_t> g_idx(static_cast<size_t>(in));
  if (perm.empty())
    for (int64_t i = 0; i < in; ++i) g_idx[size_t(i)] = int32_t(i / w.group);
  else
    g_idx = perm_to_g_idx(perm, w.group);
  Tensor gt = Tensor::empty({in}, DType::I32);
  std::copy(g_idx.begin(), g_idx.end(), gt.data_as<int32_t>());

  return {{"qweight", detail::int32_tensor({in / p, out}, qweight)},
          {"qzeros", detail::int32_tensor({groups, out / p}, qzeros)},
          {"scales", detail::float_tensor({groups, out}, st, scale_dtype, src, "scales")},
          {"g_idx", gt}};
}

QuantConfigOptions gptq_module_options(const TensorGetter& get, int64_t in, QuantConfigOptions o) {
  if (std::optional<Tensor> qw = get("qweight"); qw && qw->ndim() == 2) {
    const int64_t rows = qw->dim(0);
    if (rows > 0 && (32 * rows) % in == 0) o.bits = int(32 * rows / in);
    if (std::optional<Tensor> sc = get("scales"); sc && sc->ndim() == 2) {
      const int64_t groups = sc->dim(0);
      if (groups > 0 && in % groups == 0) o.group_size = groups == 1 ? -1 : in / groups;
    }
  }
  return o;
}

QuantWeight from_gptq(const TensorGetter& get, int64_t out, int64_t in, int bits, int64_t group, bool sym,
                      GptqFormat format, const std::string& source) {
  if (bits != 4 && bits != 8)
    fail(source, "bits", "{}-bit GPTQ is not supported (Kite's layouts hold 4 and 8 bits)", bits);
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  const int64_t p = 32 / bits;
  const int64_t gs = detail::resolve_group(group, in, source);
  const int64_t groups = in / gs;
  if (in % p || out % p)
    fail(source, "shape", "GPTQ packs {} values per int32; [{}, {}] is not a multiple of {}", p, out, in, p);
  const uint32_t mask = (1u << bits) - 1;

  Tensor qw = need(get, "qweight", source, {DType::I32}, {in / p, out});
  Tensor sc = need(get, "scales", source, {DType::F16, DType::BF16, DType::F32}, {groups, out});
  std::optional<Tensor> qz = detail::maybe(get, "qzeros", source, {DType::I32}, {groups, out / p});
  std::optional<Tensor> gi = detail::maybe(get, "g_idx", source, {DType::I32, DType::I64}, {in});

  // zeros [out, G]
  std::vector<float> zeros(size_t(out * groups), float(1 << (bits - 1)));
  if (qz) {
    const uint32_t* words = qz->data_as<const uint32_t>();
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t c = 0; c < out / p; ++c) {
        uint32_t word = words[g * (out / p) + c];
        if (format == GptqFormat::V1) word += v1_offset(bits);
        for (int64_t k = 0; k < p; ++k) zeros[size_t((c * p + k) * groups + g)] = float((word >> (bits * k)) & mask);
      }
  } else if (!sym) {
    fail(source, "qzeros", "missing; asymmetric GPTQ needs I32 [{}, {}]", groups, out / p);
  }
  if (bits == 8)
    for (size_t k = 0; k < zeros.size(); ++k)
      if (zeros[k] != 128.0f)
        fail(source, "qzeros", "8-bit zero-point {} at output {}, group {}: Kite's Int8 is symmetric (zero 128)",
             zeros[k], int64_t(k) / groups, int64_t(k) % groups);

  std::vector<int32_t> perm;
  if (gi) {
    const std::vector<int64_t> v = detail::int_values(*gi);
    std::vector<int32_t> g_idx(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] < 0 || v[i] >= groups) fail(source, "g_idx", "g_idx[{}] = {} is outside [0, {})", i, v[i], groups);
      g_idx[i] = int32_t(v[i]);
    }
    perm = g_idx_to_perm(g_idx, gs, source, "g_idx");
  }

  std::vector<uint8_t> codes(size_t(out * in));  // input order
  const uint32_t* q = qw.data_as<const uint32_t>();
  for (int64_t r = 0; r < in / p; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t word = q[r * out + o];
      for (int64_t k = 0; k < p; ++k) codes[size_t(o * in + r * p + k)] = uint8_t((word >> (bits * k)) & mask);
    }

  const std::vector<float> s = sc.to_floats();  // [G, out]
  std::vector<float> scales(size_t(out * groups));
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o) scales[size_t(o * groups + g)] = s[size_t(g * out + o)];
  if (bits == 8) zeros.clear();
  QuantWeight w = detail::make_int_weight(bits, out, in, gs, codes, std::move(scales), std::move(zeros), perm);
  w.validate(source);
  return w;
}

}  // namespace kite::quant
