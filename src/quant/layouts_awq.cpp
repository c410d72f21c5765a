// AutoAWQ GEMM checkpoints (version "gemm"), 4-bit only:
//   qweight I32 [in, out / 8]   word (i, c) holds outputs 8c .. 8c+7 of input
//                               column i; nibble k (bits 4k .. 4k+3) holds
//                               output 8c + kAwqOrder[k], unsigned code u
//   qzeros  I32 [G, out / 8]    the same packing of the zero-points (stored
//                               as they are, no "- 1")
//   scales  F16 [G, out]
// W[o, i] = (u - zero[i / group, o]) * scales[i / group, o]. No act-order.
#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant {

namespace {

// AutoAWQ's AWQ_ORDER: nibble k of a word holds column kAwqOrder[k] of its 8.
constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// Packs v[row, col] ([rows, cols], values < 16) into words [rows, cols / 8].
std::vector<uint32_t> awq_pack(const std::vector<uint8_t>& v, int64_t rows, int64_t cols) {
  std::vector<uint32_t> words(size_t(rows * (cols / 8)), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols / 8; ++c) {
      uint32_t word = 0;
      for (int k = 0; k < 8; ++k) word |= uint32_t(v[size_t(r * cols + c * 8 + kAwqOrder[k])]) << (4 * k);
      words[size_t(r * (cols / 8) + c)] = word;
    }
  return words;
}

std::vector<uint8_t> awq_unpack(const uint32_t* words, int64_t rows, int64_t cols) {
  std::vector<uint8_t> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols / 8; ++c) {
      const uint32_t word = words[r * (cols / 8) + c];
      for (int k = 0; k < 8; ++k) v[size_t(r * cols + c * 8 + kAwqOrder[k])] = uint8_t((word >> (4 * k)) & 0xF);
    }
  return v;
}

}  // namespace

TensorMap to_awq(const QuantWeight& w, DType scale_dtype) {
  const std::string src = "to_awq";
  detail::check_weight(w, {QuantScheme::Int4}, {ActQuant::None}, src);
  if (!dtype_is_float(scale_dtype)) fail(src, "scales", "scale dtype {} is not a float type", dtype_name(scale_dtype));
  if (w.perm.defined()) fail(src, "perm", "AWQ has no act-order; export act-ordered weights as GPTQ");
  const int64_t out = w.out, in = w.in, groups = in / w.group;
  if (out % 8) fail(src, "shape", "AWQ packs 8 output columns per int32; out = {} is not a multiple of 8", out);
  const std::vector<uint8_t> codes = detail::codes_in_input_order(w, src);  // [out, in]
  std::vector<uint8_t> t(size_t(in * out));                                 // [in, out]
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) t[size_t(i * out + o)] = codes[size_t(o * in + i)];

  const std::vector<int> z = detail::integral_zeros(w, 0, 15, src, "");
  const std::vector<float> s = w.scales.to_floats();
  std::vector<uint8_t> zt(size_t(groups * out));
  std::vector<float> st(size_t(groups * out));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      zt[size_t(g * out + o)] = uint8_t(z[size_t(o * groups + g)]);
      st[size_t(g * out + o)] = s[size_t(o * groups + g)];
    }
  return {{"qweight", detail::int32_tensor({in, out / 8}, awq_pack(t, in, out))},
          {"qzeros", detail::int32_tensor({groups, out / 8}, awq_pack(zt, groups, out))},
          {"scales", detail::float_tensor({groups, out}, st, scale_dtype, src, "scales")}};
}

QuantWeight from_awq(const TensorGetter& get, int64_t out, int64_t in, int64_t group, const std::string& source) {
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  if (out % 8) fail(source, "shape", "AWQ packs 8 output columns per int32; out = {} is not a multiple of 8", out);
  if (in % 2) fail(source, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte", in);
  const int64_t gs = detail::resolve_group(group, in, source);
  const int64_t groups = in / gs;
  Tensor qw = detail::need(get, "qweight", source, {DType::I32}, {in, out / 8});
  Tensor qz = detail::need(get, "qzeros", source, {DType::I32}, {groups, out / 8});
  Tensor sc = detail::need(get, "scales", source, {DType::F16, DType::BF16, DType::F32}, {groups, out});

  const std::vector<uint8_t> t = awq_unpack(qw.data_as<const uint32_t>(), in, out);       // [in, out]
  const std::vector<uint8_t> zt = awq_unpack(qz.data_as<const uint32_t>(), groups, out);  // [G, out]
  const std::vector<float> st = sc.to_floats();
  std::vector<uint8_t> codes(size_t(out * in));
  for (int64_t i = 0; i < in; ++i)
    for (int64_t o = 0; o < out; ++o) codes[size_t(o * in + i)] = t[size_t(i * out + o)];
  std::vector<float> scales(size_t(out * groups)), zeros(size_t(out * groups));
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o) {
      scales[size_t(o * groups + g)] = st[size_t(g * out + o)];
      zeros[size_t(o * groups + g)] = float(zt[size_t(g * out + o)]);
    }
  QuantWeight w = detail::make_int_weight(4, out, in, gs, codes, std::move(scales), std::move(zeros), {});
  w.validate(source);
  return w;
}

}  // namespace kite::quant
