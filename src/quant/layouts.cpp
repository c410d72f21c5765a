// Shared pieces of the checkpoint-layout converters: tensor checks, act-order
// permutations, and the dispatch to the per-tool files (layouts_*.cpp).
#include "quant/layouts.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace kite::quant {

TensorGetter getter_of(const TensorMap& tensors) {
  return [&tensors](const std::string& suffix) -> std::optional<Tensor> {
    for (const auto& [name, t] : tensors)
      if (name == suffix) return t;
    return std::nullopt;
  };
}

TensorGetter getter_of(const Checkpoint& checkpoint, const std::string& prefix) {
  return [&checkpoint, prefix](const std::string& suffix) -> std::optional<Tensor> {
    const std::string name = prefix + suffix;
    if (!checkpoint.has(name)) return std::nullopt;
    return checkpoint.get(name);
  };
}

std::vector<int32_t> perm_to_g_idx(const std::vector<int32_t>& perm, int64_t group) {
  KITE_CHECK(group > 0, "group {}", group);
  std::vector<int32_t> g_idx(perm.size(), -1);
  for (size_t j = 0; j < perm.size(); ++j) {
    KITE_CHECK(perm[j] >= 0 && size_t(perm[j]) < perm.size() && g_idx[size_t(perm[j])] < 0,
               "perm is not a permutation at {}", j);
    g_idx[size_t(perm[j])] = int32_t(int64_t(j) / group);
  }
  return g_idx;
}

std::vector<int32_t> g_idx_to_perm(const std::vector<int32_t>& g_idx, int64_t group, const std::string& source,
                                   const std::string& field) {
  const int64_t in = int64_t(g_idx.size());
  if (group < 1 || in % group) fail(source, field, "group size {} does not divide the input dimension {}", group, in);
  const int64_t groups = in / group;
  std::vector<int64_t> count(size_t(groups), 0);
  bool identity = true;
  for (int64_t i = 0; i < in; ++i) {
    const int64_t g = g_idx[size_t(i)];
    if (g < 0 || g >= groups)
      fail(source, field, "g_idx[{}] = {} is outside [0, {}) (in {}, group size {})", i, g, groups, in, group);
    ++count[size_t(g)];
    identity = identity && g == i / group;
  }
  for (int64_t g = 0; g < groups; ++g)
    if (count[size_t(g)] != group)
      fail(source, field, "group {} has {} input columns; every group must have group_size = {}", g, count[size_t(g)],
           group);
  if (identity) return {};
  std::vector<int32_t> perm(static_cast<size_t>(in));
  std::vector<int64_t> next(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) next[size_t(g)] = g * group;
  for (int64_t i = 0; i < in; ++i) perm[size_t(next[size_t(g_idx[size_t(i)])]++)] = int32_t(i);
  return perm;
}

namespace detail {

namespace {
std::string dtype_list(std::initializer_list<DType> dtypes) {
  std::string s;
  for (DType d : dtypes) s += (s.empty() ? "" : " or ") + std::string(dtype_name(d));
  return s;
}
}  // namespace

std::optional<Tensor> maybe(const TensorGetter& get, const std::string& name, const std::string& source,
                            std::initializer_list<DType> dtypes, const Shape& shape) {
  std::optional<Tensor> t = get(name);
  if (!t) return std::nullopt;
  if (!t->defined()) fail(source, name, "is an empty tensor handle");
  if (std::find(dtypes.begin(), dtypes.end(), t->dtype()) == dtypes.end())
    fail(source, name, "expected dtype {}, got {} {}", dtype_list(dtypes), dtype_name(t->dtype()), t->shape_str());
  if (!shape.empty() && t->shape() != shape)
    fail(source, name, "expected shape {}, got {} ({})", shape_to_string(shape), t->shape_str(),
         dtype_name(t->dtype()));
  Tensor c = t->device().is_cpu() ? t->contiguous() : t->to(kCpu);
  return c;
}

Tensor need(const TensorGetter& get, const std::string& name, const std::string& source,
            std::initializer_list<DType> dtypes, const Shape& shape) {
  std::optional<Tensor> t = maybe(get, name, source, dtypes, shape);
  if (!t)
    fail(source, name, "missing; expected {} {}", dtype_list(dtypes), shape.empty() ? "" : shape_to_string(shape));
  return *t;
}

std::vector<int64_t> int_values(const Tensor& t) {
  std::vector<int64_t> v(size_t(t.numel()));
  const void* p = t.data();
  for (size_t i = 0; i < v.size(); ++i) {
    switch (t.dtype()) {
      case DType::I8: v[i] = static_cast<const int8_t*>(p)[i]; break;
      case DType::U8: v[i] = static_cast<const uint8_t*>(p)[i]; break;
      case DType::I32: v[i] = static_cast<const int32_t*>(p)[i]; break;
      case DType::I64: v[i] = static_cast<const int64_t*>(p)[i]; break;
      default: KITE_CHECK(false, "int_values of {}", dtype_name(t.dtype()));
    }
  }
  return v;
}

Tensor float_tensor(const Shape& shape, const std::vector<float>& values, DType dtype, const std::string& source,
                    const std::string& name) {
  KITE_CHECK(int64_t(values.size()) == shape_numel(shape), "{} values for {}", values.size(), shape_to_string(shape));
  Tensor t = Tensor::empty(shape, dtype);
  convert_from_f32(values.data(), t.data(), dtype, values.size());
  if (dtype != DType::F32) {
    std::vector<float> back(values.size());
    convert_to_f32(t.data(), dtype, back.data(), back.size());
    for (size_t k = 0; k < values.size(); ++k)
      if (std::isfinite(values[k]) && !std::isfinite(back[k]))
        fail(source.empty() ? "layouts" : source, name, "value {} (entry {}) does not fit in {}", values[k], k,
             dtype_name(dtype));
  }
  return t;
}

Tensor int32_tensor(const Shape& shape, const std::vector<uint32_t>& words) {
  KITE_CHECK(int64_t(words.size()) == shape_numel(shape), "{} words for {}", words.size(), shape_to_string(shape));
  Tensor t = Tensor::empty(shape, DType::I32);
  if (!words.empty()) std::memcpy(t.data(), words.data(), words.size() * 4);
  return t;
}

std::vector<int32_t> perm_values(const QuantWeight& w, const std::string& source) {
  if (!w.perm.defined()) return {};
  Tensor p = w.perm.to(kCpu);
  const int32_t* pp = p.data_as<const int32_t>();
  std::vector<int32_t> perm(pp, pp + w.in);
  std::vector<char> seen(size_t(w.in), 0);
  for (int64_t j = 0; j < w.in; ++j) {
    if (perm[size_t(j)] < 0 || perm[size_t(j)] >= w.in || seen[size_t(perm[size_t(j)])])
      fail(source, "perm", "not a permutation of [0, {}): entry {} is {}", w.in, j, perm[size_t(j)]);
    seen[size_t(perm[size_t(j)])] = 1;
  }
  return perm;
}

std::vector<uint8_t> codes_in_input_order(const QuantWeight& w, const std::string& source) {
  const std::vector<int32_t> perm = perm_values(w, source);
  Tensor q = w.qdata.to(kCpu);
  std::vector<uint8_t> codes(size_t(w.out * w.in));
  for (int64_t o = 0; o < w.out; ++o) {
    uint8_t* dst = codes.data() + o * w.in;
    for (int64_t j = 0; j < w.in; ++j) {
      uint8_t u;
      if (w.scheme == QuantScheme::Int4)
        u = get_nibble(q.data_as<const uint8_t>() + o * (w.in / 2), j);
      else
        u = uint8_t(int(q.data_as<const int8_t>()[o * w.in + j]) + 128);
      dst[perm.empty() ? j : perm[size_t(j)]] = u;
    }
  }
  return codes;
}

std::vector<int> integral_zeros(const QuantWeight& w, int lo, int hi, const std::string& source,
                                const std::string& why) {
  const std::vector<float> z = w.zeros.to_floats();
  const int64_t groups = w.in / w.group;
  std::vector<int> out(z.size());
  for (size_t k = 0; k < z.size(); ++k) {
    const float v = z[k];
    if (!(v >= float(lo) && v <= float(hi)) || v != std::nearbyint(v))
      fail(source, "zeros", "zero-point {} at [{}, {}] is not an integer in [{}, {}]{}", v, int64_t(k) / groups,
           int64_t(k) % groups, lo, hi, why);
    out[k] = int(v);
  }
  return out;
}

QuantWeight make_int_weight(int bits, int64_t out, int64_t in, int64_t group, const std::vector<uint8_t>& codes,
                            std::vector<float> scales, std::vector<float> zeros, const std::vector<int32_t>& perm) {
  QuantWeight w;
  w.scheme = bits == 4 ? QuantScheme::Int4 : QuantScheme::Int8;
  w.out = out;
  w.in = in;
  w.group = group;
  const int64_t groups = in / group;
  if (bits == 4) {
    w.qdata = Tensor::zeros({out, in / 2}, DType::U8);
    uint8_t* q = w.qdata.data_as<uint8_t>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < in; ++j)
        set_nibble(q + o * (in / 2), j, codes[size_t(o * in + (perm.empty() ? j : perm[size_t(j)]))]);
    w.zeros = Tensor::from_floats({out, groups}, zeros);
  } else {
    w.qdata = Tensor::empty({out, in}, DType::I8);
    int8_t* q = w.qdata.data_as<int8_t>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < in; ++j)
        q[o * in + j] = int8_t(int(codes[size_t(o * in + (perm.empty() ? j : perm[size_t(j)]))]) - 128);
  }
  w.scales = Tensor::from_floats({out, groups}, scales);
  if (!perm.empty()) {
    w.perm = Tensor::empty({in}, DType::I32);
    std::copy(perm.begin(), perm.end(), w.perm.data_as<int32_t>());
  }
  return w;
}

void check_weight(const QuantWeight& w, std::initializer_list<QuantScheme> schemes,
                  std::initializer_list<ActQuant> acts, const std::string& source) {
  if (std::find(schemes.begin(), schemes.end(), w.scheme) == schemes.end()) {
    std::string names;
    for (QuantScheme s : schemes) names += (names.empty() ? "" : " or ") + std::string(quant_scheme_name(s));
    fail(source, "scheme", "this layout holds {} weights, not {}", names, quant_scheme_name(w.scheme));
  }
  w.validate(source);
  if (w.smooth.defined())
    fail(source, "smooth", "SmoothQuant factors have no place in this layout; fold them into the preceding norm first");
  if (std::find(acts.begin(), acts.end(), w.act) == acts.end())
    fail(source, "act", "this layout cannot record the weight's activation quantization (ActQuant {})", int(w.act));
}

std::string show(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 120) s = s.substr(0, 117) + "...";
  return s;
}

int64_t resolve_group(int64_t group, int64_t in, const std::string& source) {
  const int64_t g = group == -1 ? in : group;
  if (g < 1 || in % g) fail(source, "group_size", "{} does not divide the input dimension {}", group, in);
  return g;
}

}  // namespace detail

// ---- dispatch ----------------------------------------------------------------

namespace {

int64_t config_group(const QuantConfigOptions& o, int64_t in) { return o.group_size == -1 ? in : o.group_size; }

void check_against(const QuantWeight& w, QuantLayout layout, const QuantConfigOptions& o) {
  const std::string src = fmt::format("to_layout({})", quant_layout_name(layout));
  const bool int_scheme = w.scheme == QuantScheme::Int4 || w.scheme == QuantScheme::Int8;
  if (int_scheme) {
    const int bits = w.scheme == QuantScheme::Int4 ? 4 : 8;
    if (layout != QuantLayout::CompressedInt8 && bits != o.bits)
      fail(src, "bits", "the weight has {}-bit codes, the config says {}", bits, o.bits);
    if (!o.weight_per_tensor && w.group != config_group(o, w.in))
      fail(src, "group_size", "the weight's group is {}, the config's {} (in = {})", w.group, o.group_size, w.in);
    if (layout == QuantLayout::Gptq && o.sym && bits == 4)
      detail::integral_zeros(w, 8, 8, src, " (sym = true: GPTQ readers such as vLLM's Marlin assume zero 8)");
    if (w.perm.defined() && !o.desc_act)
      fail(src, "desc_act", "the weight is act-ordered (perm) but the config has desc_act / actorder off");
  }
  if (layout == QuantLayout::CompressedFp8 && w.scheme == QuantScheme::Fp8 && w.scales.defined()) {
    const bool per_tensor = w.scales.dim(0) == 1 && w.out != 1;
    if (per_tensor != o.weight_per_tensor)
      fail(src, "weight_per_tensor", "the weight's scale is per {}, the config's per {}",
           per_tensor ? "tensor" : "channel", o.weight_per_tensor ? "tensor" : "channel");
  }
  const bool ct = layout == QuantLayout::CompressedFp8 || layout == QuantLayout::CompressedInt8 ||
                  layout == QuantLayout::CompressedPacked;
  if (ct && w.act != o.act)
    fail(src, "act", "the weight's activation quantization ({}) differs from the config's ({})", int(w.act),
         int(o.act));
}

}  // namespace

TensorMap to_layout(const QuantWeight& w, QuantLayout layout, const QuantConfigOptions& o) {
  check_against(w, layout, o);
  switch (layout) {
    case QuantLayout::Gptq: return to_gptq(w, o.gptq_format);
    case QuantLayout::Awq: return to_awq(w);
    case QuantLayout::CompressedFp8: return to_ct_fp8(w);
    case QuantLayout::CompressedInt8: return to_ct_int8(w);
    case QuantLayout::CompressedPacked: return to_ct_packed(w, o.sym);
    case QuantLayout::BnbNf4: return to_bnb_nf4(w, o.double_quant, o.compute_dtype);
  }
  KITE_CHECK(false, "layout {}", int(layout));
}

QuantWeight from_layout(const TensorGetter& get, int64_t out, int64_t in, const ParsedQuantConfig& c,
                        const std::string& source) {
  const QuantConfigOptions& o = c.options;
  switch (c.layout) {
    case QuantLayout::Gptq: {
      const QuantConfigOptions m = gptq_module_options(get, in, o);
      return from_gptq(get, out, in, m.bits, m.group_size, m.sym, m.gptq_format, source);
    }
    case QuantLayout::Awq: return from_awq(get, out, in, o.group_size, source);
    case QuantLayout::CompressedFp8: return from_ct_fp8(get, out, in, o.act, source);
    case QuantLayout::CompressedInt8:
      return from_ct_int8(get, out, in, o.weight_per_tensor ? -1 : o.group_size, o.act, source);
    case QuantLayout::CompressedPacked: return from_ct_packed(get, out, in, o.bits, o.group_size, o.sym, source);
    case QuantLayout::BnbNf4: return from_bnb_nf4(get, out, in, source);
  }
  KITE_CHECK(false, "layout {}", int(c.layout));
}

}  // namespace kite::quant
