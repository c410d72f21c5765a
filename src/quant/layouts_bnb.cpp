// bitsandbytes 4-bit NF4 as transformers serializes Linear4bit (the state
// dict of bnb's QuantState.as_dict(packed=True)):
//   weight            U8 [(n + 1) / 2, 1]  n = out * in row-major elements;
//                     byte k = code[2k] << 4 | code[2k + 1] (high nibble first)
//   weight.absmax     F32 [nb] (nb = ceil(n / blocksize)), or with double
//                     quant U8 [nb]: the 8-bit codes of absmax - offset
//   weight.quant_map  F32 [16], the NF4 table
//   weight.nested_absmax     F32 [ceil(nb / 256)]  (double quant)
//   weight.nested_quant_map  F32 [256], create_dynamic_map(signed=True)
//   weight.quant_state.bitsandbytes__nf4  U8 [len]: UTF-8 JSON {"quant_type":
//     "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out, in],
//     "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": x}
// A reader computes absmax[b] = nested_quant_map[q[b]] * nested_absmax[b /
// 256] + offset (float32, in that order), W = quant_map[code] * absmax[block].
#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant {

using detail::maybe;
using detail::need;
using detail::show;

namespace {

constexpr int64_t kNestedBlock = 256;
constexpr int kZeroCode = 127;  // bnb_dynamic_map()[127] == 0

// torch.linspace(start, end, steps) in float32 as ATen computes it: the
// first half from start, the second half back from end.
std::vector<float> linspace_f32(float start, float end, int steps) {
  std::vector<float> v(static_cast<size_t>(steps));
  const float step = (end - start) / float(steps - 1);
  const int halfway = steps / 2;
  for (int k = 0; k < steps; ++k) {
    const float t = k < halfway ? step * float(k) : step * float(steps - k - 1);
    v[size_t(k)] = k < halfway ? start + t : end - t;
  }
  return v;
}

std::array<float, 256> make_dynamic_map() {
  // Signed, 7 exponent bits: decade i (scale 10^(i-6)) holds the 2^i
  // midpoints of linspace(0.1, 1, 2^i + 1), with both signs; plus 0 and 1.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, (1 << i) + 1);
    const float scale = float(std::pow(10.0, double(i - 6)));
    for (size_t k = 0; k + 1 < b.size(); ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      const float v = scale * mean;
      data.push_back(v);
      data.push_back(-v);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  KITE_CHECK(data.size() == 256, "dynamic map has {} entries", data.size());
  std::sort(data.begin(), data.end());
  std::array<float, 256> out;
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

struct DynamicMap {
  std::array<float, 256> value;
  std::array<float, 255> mid;  // (value[k] + value[k + 1]) / 2 in float, as bnb's bucketize bounds
  DynamicMap() : value(make_dynamic_map()) {
    for (size_t k = 0; k < 255; ++k) mid[k] = (value[k] + value[k + 1]) / 2.0f;
  }
  // bnb's code of a scaled value s: the number of bounds below s.
  int code(float s) const { return int(std::lower_bound(mid.begin(), mid.end(), s) - mid.begin()); }
};

const DynamicMap& dmap() {
  static const DynamicMap m;
  return m;
}

// v with 9 significant bits: to nearest (ties to even) / rounded up.
float grid_step(float v) {
  int e = 0;
  std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
  return std::ldexp(1.0f, e - 9);
}
float round9(float v) {
  if (v == 0 || !std::isfinite(v)) return v;
  const float step = grid_step(v);
  return std::nearbyint(v / step) * step;
}
float ceil9(float v) {
  if (v == 0 || !std::isfinite(v)) return v;
  const float step = grid_step(v);
  return std::ceil(v / step) * step;
}

float mean_f32(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return float(s / double(v.size()));
}

float decode(int q, float a2, float off) {
  const float p = dmap().value[size_t(q)] * a2;
  return p + off;
}

struct DoubleQuant {
  float offset = 0;
  std::vector<float> nested_absmax;  // [ceil(n / 256)]
  std::vector<uint8_t> codes;        // [n]
};

// bnb's quantize_blockwise of absmax - offset (blocks of 256, dynamic map,
// s = clamp(x * (1 / scale), -1, 1), code = #bounds < s), with each block's
// scale rounded up to 9 significant bits.
DoubleQuant encode(const std::vector<float>& a, float off) {
  DoubleQuant d;
  d.offset = off;
  const size_t n = a.size(), nb = (n + kNestedBlock - 1) / kNestedBlock;
  d.nested_absmax.resize(nb);
  d.codes.resize(n);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = a[i] - off;
  for (size_t b = 0; b < nb; ++b) {
    const size_t lo = b * kNestedBlock, hi = std::min(n, lo + kNestedBlock);
    float amax = 0;
    for (size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float a2 = ceil9(amax);
    const float inv = 1.0f / std::max(a2, 1e-38f);
    d.nested_absmax[b] = a2;
    for (size_t i = lo; i < hi; ++i) d.codes[i] = uint8_t(dmap().code(std::clamp(x[i] * inv, -1.0f, 1.0f)));
  }
  return d;
}

std::vector<float> decode_all(const DoubleQuant& d) {
  std::vector<float> v(d.codes.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = decode(d.codes[i], d.nested_absmax[i / kNestedBlock], d.offset);
  return v;
}

// Codes that decode block v[0..n) exactly with (a2, off), or false.
bool codes_for(const float* v, size_t n, float a2, float off, uint8_t* codes) {
  for (size_t i = 0; i < n; ++i) {
    if (a2 == 0) {
      if (decode(kZeroCode, 0, off) != v[i]) return false;
      codes[i] = kZeroCode;
      continue;
    }
    const float s = (v[i] - off) / a2;
    const int q0 = dmap().code(std::clamp(s, -1.0f, 1.0f));
    int found = -1;
    for (int d = 0; d <= 3 && found < 0; ++d)
      for (int q : {q0 - d, q0 + d})
        if (found < 0 && q >= 0 && q < 256 && decode(q, a2, off) == v[i]) found = q;
    for (int q = 0; q < 256 && found < 0; ++q)
      if (decode(q, a2, off) == v[i]) found = q;
    if (found < 0) return false;
    codes[i] = uint8_t(found);
  }
  return true;
}

// Calls try_scale(c) on the 9-bit values c near each base (> 0), nearest
// first: round9(base) +- d steps for d = 0 .. reach, on the base's grid and
// on the finer grid below a power of two, each value once, until it returns
// true. Usually the first candidate fits.
template <typename F>
bool search_near(std::initializer_list<float> bases, int reach, F&& try_scale) {
  std::vector<float> tried;
  for (int d = 0; d <= reach; ++d)
    for (float base : bases) {
      const float r = round9(base);
      const float step = grid_step(r);
      for (float c : {r + float(d) * step, r - float(d) * step, r + float(d) * step / 2, r - float(d) * step / 2}) {
        if (!(c > 0) || round9(c) != c || std::find(tried.begin(), tried.end(), c) != tried.end()) continue;
        tried.push_back(c);
        if (try_scale(c)) return true;
      }
    }
  return false;
}

// Kite's offset sits on a grid so that to_bnb_nf4 can find it again from
// the dequantized values, whose mean differs from the original mean by the
// average quantization error (a few grid steps): first choice the mean with
// 9 significant bits (steps of 2^(e-9), |mean| in [2^(e-1), 2^e)); when
// that cannot be recovered (a mean near 0 against a wide spread) the mean on
// steps of 2^(e-8) for max |absmax| in [2^(e-1), 2^e).
float pow2_step(float v, int bits) {
  int e = 0;
  std::frexp(v, &e);
  return std::ldexp(1.0f, e - bits);
}

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

float on_grid(float v, float step) { return step > 0 ? std::nearbyint(v / step) * step : 0.0f; }

float mean_grid_step(const std::vector<float>& v) {
  const float m = mean_f32(v);
  return m == 0 ? 0.0f : pow2_step(std::fabs(m), 9);
}
float max_grid_step(const std::vector<float>& v) {
  const float mx = max_abs(v);
  return mx == 0 ? 0.0f : pow2_step(mx, 8);
}

// Finds an 8-bit encoding of v (Kite's double quant of some absmax) that
// decodes to v exactly: the offset on one of the grids near v's mean, each
// block's scale near the value its extreme element implies.
std::optional<DoubleQuant> recover(const std::vector<float>& v) {
  if (v.empty()) return DoubleQuant{};
  for (float x : v)
    if (!std::isfinite(x)) return std::nullopt;
  const float m = mean_f32(v);
  std::vector<float> offsets;
  std::set<float> seen;
  for (auto [step0, reach] : {std::pair{mean_grid_step(v), 64}, std::pair{max_grid_step(v), 12}})
    for (int d = 0; d <= reach && step0 > 0; ++d)
      for (float scale : {1.0f, 0.5f, 2.0f}) {  // |v|'s power of two may differ from the original's
        const float step = step0 * scale, k = std::nearbyint(m / step);
        for (float c : {(k + float(d)) * step, (k - float(d)) * step})
          if (seen.insert(c).second) offsets.push_back(c);
      }
  if (seen.insert(0.0f).second) offsets.push_back(0.0f);
  const auto& val = dmap().value;
  const size_t n = v.size(), nb = (n + kNestedBlock - 1) / kNestedBlock;
  for (float off : offsets) {
    DoubleQuant d;
    d.offset = off;
    d.nested_absmax.resize(nb);
    d.codes.resize(n);
    bool ok = true;
    for (size_t b = 0; b < nb && ok; ++b) {
      const size_t lo = b * kNestedBlock, len = std::min(n, lo + kNestedBlock) - lo;
      float hi = 0, lw = 0, vmax = 0;
      for (size_t i = lo; i < lo + len; ++i) {
        const float x = v[i] - off;
        hi = std::max(hi, x);
        lw = std::min(lw, x);
        vmax = std::max(vmax, std::fabs(v[i]));
      }
      auto try_scale = [&](float a2) {
        if (!codes_for(v.data() + lo, len, a2, off, d.codes.data() + lo)) return false;
        d.nested_absmax[b] = a2;
        return true;
      };
      if (hi == 0 && lw == 0) {
        ok = try_scale(0.0f);
      } else {
        // The extreme element has code 255 or 254 (x > 0) or code 0 (x < 0);
        // v's rounding moves the estimate by about ulp(vmax) / step steps.
        const float base = hi > 0 ? hi / val[255] : -lw / -val[0];
        const float err = (std::nextafter(vmax, INFINITY) - vmax) / grid_step(base);
        const int reach = int(std::min(16.0f, 2 + std::ceil(2 * err)));
        if (hi > 0 && lw < 0)
          ok = search_near({hi / val[255], -lw / -val[0], hi / val[254]}, reach, try_scale);
        else if (hi > 0)
          ok = search_near({hi / val[255], hi / val[254]}, reach, try_scale);
        else
          ok = search_near({-lw / -val[0]}, reach, try_scale);
      }
    }
    if (ok) return d;
  }
  return std::nullopt;
}

// Python json.dumps spelling of a float (repr; "0.0", not "0").
std::string py_float(double x) {
  std::string s = fmt::format("{}", x);
  if (s.find_first_of(".einf") == std::string::npos) s += ".0";
  return s;
}

void check_blocksize(int64_t block, const std::string& source, const std::string& field) {
  static constexpr int64_t kValid[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
  if (std::find(std::begin(kValid), std::end(kValid), block) == std::end(kValid))
    fail(source, field, "blocksize {} is not one bitsandbytes accepts (32, 64, ..., 4096)", block);
}

}  // namespace

const std::array<float, 256>& bnb_dynamic_map() { return dmap().value; }

std::vector<float> bnb_double_quant_roundtrip(const std::vector<float>& absmax) {
  if (absmax.empty()) return {};
  for (float a : absmax)
    if (!std::isfinite(a)) fail("bnb_double_quant", "absmax", "non-finite absmax value {}", a);
  const float mean = mean_f32(absmax);
  std::vector<float> v = decode_all(encode(absmax, on_grid(mean, mean_grid_step(absmax))));
  if (recover(v)) return v;
  v = decode_all(encode(absmax, on_grid(mean, max_grid_step(absmax))));
  KITE_CHECK(recover(v).has_value(), "double-quantized absmax ({} values) not recoverable", v.size());
  return v;
}

bool bnb_double_quant_exact(const std::vector<float>& absmax) { return recover(absmax).has_value(); }

TensorMap to_bnb_nf4(const QuantWeight& w, bool double_quant, const std::string& dtype) {
  const std::string src = "to_bnb_nf4";
  detail::check_weight(w, {QuantScheme::Nf4}, {ActQuant::None}, src);
  check_blocksize(w.group, src, "group");
  if (dtype != "bfloat16" && dtype != "float16" && dtype != "float32")
    fail(src, "dtype", "'{}' is not bfloat16, float16 or float32", dtype);
  const int64_t n = w.out * w.in, nb = n / w.group;
  Tensor q = w.qdata.to(kCpu);
  Tensor packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8);
  const uint8_t* s = q.data_as<const uint8_t>();
  uint8_t* d = packed.data_as<uint8_t>();
  for (int64_t k = 0; k < n / 2; ++k) d[k] = uint8_t((s[k] >> 4) | (s[k] << 4));  // Kite: low nibble first

  const std::vector<float> absmax = w.scales.to_floats();
  TensorMap m = {{"weight", packed}};
  std::string state = fmt::format(R"({{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [{}, {}])",
                                  w.group, dtype, w.out, w.in);
  if (double_quant) {
    std::optional<DoubleQuant> dq = recover(absmax);
    if (!dq)
      fail(src, "absmax",
           "the block absmax values are not ones bitsandbytes' 8-bit double quantization holds exactly; quantize "
           "with bnb_double_quant_roundtrip (kite quantize does), or export without double quant");
    Tensor codes = Tensor::empty({nb}, DType::U8);
    std::copy(dq->codes.begin(), dq->codes.end(), codes.data_as<uint8_t>());
    const auto& map = bnb_dynamic_map();
    m.emplace_back("weight.absmax", codes);
    m.emplace_back("weight.quant_map", Tensor::from_floats({16}, {kNf4Table.begin(), kNf4Table.end()}));
    m.emplace_back("weight.nested_absmax", Tensor::from_floats({int64_t(dq->nested_absmax.size())}, dq->nested_absmax));
    m.emplace_back("weight.nested_quant_map", Tensor::from_floats({256}, {map.begin(), map.end()}));
    state += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})", kNestedBlock,
                         py_float(double(dq->offset)));
  } else {
    m.emplace_back("weight.absmax", Tensor::from_floats({nb}, absmax));
    m.emplace_back("weight.quant_map", Tensor::from_floats({16}, {kNf4Table.begin(), kNf4Table.end()}));
  }
  state += "}";
  Tensor blob = Tensor::empty({int64_t(state.size())}, DType::U8);
  std::copy(state.begin(), state.end(), blob.data_as<char>());
  m.emplace_back("weight.quant_state.bitsandbytes__nf4", blob);
  return m;
}

QuantWeight from_bnb_nf4(const TensorGetter& get, int64_t out, int64_t in, const std::string& source) {
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  const std::string state_name = "weight.quant_state.bitsandbytes__nf4";
  std::optional<Tensor> blob = maybe(get, state_name, source, {DType::U8}, {});
  if (!blob) {
    if (get("weight.quant_state.bitsandbytes__fp4"))
      fail(source, "weight.quant_state.bitsandbytes__fp4", "bitsandbytes FP4 weights are not supported (only NF4)");
    fail(source, state_name, "missing; a bitsandbytes 4-bit weight carries its quant state as a U8 JSON blob");
  }
  if (blob->ndim() != 1) fail(source, state_name, "expected a 1-D U8 tensor, got {}", blob->shape_str());
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(std::string(blob->data_as<const char>(), size_t(blob->numel())));
  } catch (const nlohmann::json::exception& e) {
    fail(source, state_name, "is not valid JSON: {}", e.what());
  }
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!st.is_object() || !st.contains(key)) fail(source, state_name, "the quant state has no \"{}\"", key);
    return st[key];
  };
  if (field("quant_type") != "nf4") fail(source, state_name, "quant_type {} is not \"nf4\"", show(field("quant_type")));
  const nlohmann::json& bs = field("blocksize");
  if (!bs.is_number_integer()) fail(source, state_name, "blocksize {} is not an integer", show(bs));
  const int64_t block = bs.get<int64_t>();
  check_blocksize(block, source, state_name);
  const nlohmann::json& shape = field("shape");
  if (shape != nlohmann::json::array({out, in}))
    fail(source, state_name, "shape {} differs from the module's [{}, {}]", show(shape), out, in);
  if (in % 2) fail(source, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte", in);
  if (in % block)
    fail(source, state_name, "blocksize {} does not divide in = {} (Kite's NF4 blocks stay within a row)", block, in);
  const int64_t n = out * in, nb = n / block;

  Tensor packed = need(get, "weight", source, {DType::U8}, {});
  const bool shape_ok = packed.numel() == (n + 1) / 2 && packed.ndim() <= 2 &&
                        (packed.ndim() == 1 || packed.dim(0) == 1 || packed.dim(1) == 1);
  if (!shape_ok) fail(source, "weight", "expected U8 [{}, 1] (packed 4-bit), got {}", (n + 1) / 2, packed.shape_str());
  Tensor qmap = need(get, "weight.quant_map", source, {DType::F32}, {16});
  for (int k = 0; k < 16; ++k)
    if (std::fabs(qmap.data_as<const float>()[k] - kNf4Table[size_t(k)]) > 1e-6f)
      fail(source, "weight.quant_map", "entry {} is {}, not the NF4 level {}", k, qmap.data_as<const float>()[k],
           kNf4Table[size_t(k)]);

  std::vector<float> absmax;
  const bool nested = st.contains("nested_offset") || get("weight.nested_absmax").has_value();
  if (nested) {
    const nlohmann::json& off_j = field("nested_offset");
    const nlohmann::json& nbs_j = field("nested_blocksize");
    if (!off_j.is_number() || !std::isfinite(off_j.get<double>()))
      fail(source, state_name, "nested_offset {} is not a finite number", show(off_j));
    if (!nbs_j.is_number_integer() || nbs_j.get<int64_t>() < 1 || nbs_j.get<int64_t>() > (int64_t(1) << 20))
      fail(source, state_name, "nested_blocksize {} is not a block size", show(nbs_j));
    const float off = off_j.get<float>();
    const int64_t nbs = nbs_j.get<int64_t>();
    Tensor codes = need(get, "weight.absmax", source, {DType::U8}, {nb});
    Tensor a2 = need(get, "weight.nested_absmax", source, {DType::F32}, {(nb + nbs - 1) / nbs});
    Tensor nmap = need(get, "weight.nested_quant_map", source, {DType::F32}, {256});
    absmax.resize(size_t(nb));
    const uint8_t* c = codes.data_as<const uint8_t>();
    for (int64_t b = 0; b < nb; ++b) {
      const float p = nmap.data_as<const float>()[c[b]] * a2.data_as<const float>()[b / nbs];
      absmax[size_t(b)] = p + off;
    }
  } else {
    absmax = need(get, "weight.absmax", source, {DType::F32, DType::BF16, DType::F16}, {nb}).to_floats();
  }

  QuantWeight w;
  w.scheme = QuantScheme::Nf4;
  w.out = out;
  w.in = in;
  w.group = block;
  w.qdata = Tensor::empty({out, in / 2}, DType::U8);
  const uint8_t* s = packed.data_as<const uint8_t>();
  uint8_t* d = w.qdata.data_as<uint8_t>();
  for (int64_t k = 0; k < n / 2; ++k) d[k] = uint8_t((s[k] >> 4) | (s[k] << 4));
  w.scales = Tensor::from_floats({nb}, absmax);
  w.validate(source);
  return w;
}

}  // namespace kite::quant
