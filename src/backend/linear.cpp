#include "backend/linear.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "backend/kernels.h"
#include "core/error.h"

namespace kite {

namespace {

std::mutex g_mu;
std::vector<std::unique_ptr<LinearKernel>> g_linear_kernels[kNumDeviceKinds];

const char* act_name(ActQuant a) {
  switch (a) {
    case ActQuant::None: return "";
    case ActQuant::Int8Token: return " int8-token-act";
    case ActQuant::Fp8Token: return " fp8-token-act";
    case ActQuant::Fp8Static: return " fp8-static-act";
  }
  return "";
}

// A 2-D [rows, cols] tensor's rows stacked (host).
Tensor stack_rows(std::span<const Tensor> parts) {
  int64_t rows = 0;
  for (const Tensor& p : parts) rows += p.dim(0);
  Shape shape = parts[0].shape();
  shape[0] = rows;
  Tensor out = Tensor::empty(shape, parts[0].dtype());
  int64_t at = 0;
  for (const Tensor& p : parts) {
    out.slice(0, at, at + p.dim(0)).copy_from(p);
    at += p.dim(0);
  }
  return out;
}

bool same_values(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.device().is_cpu() ? a.contiguous() : a.to(kCpu);
  const Tensor cb = b.device().is_cpu() ? b.contiguous() : b.to(kCpu);
  return std::memcmp(ca.data(), cb.data(), ca.nbytes()) == 0;
}

// Fp8 per-tensor scales [1] as per-channel [out] (exact: each row keeps its scale).
Tensor fp8_row_scales(const QuantWeight& w) {
  if (w.scales.numel() == w.out) return w.scales;
  return Tensor::from_floats({w.out}, std::vector<float>(size_t(w.out), w.scales.to_floats()[0]));
}

}  // namespace

LinearSpec LinearSpec::of(const QuantWeight& w, Device device, DType act_dtype) {
  LinearSpec s;
  s.scheme = w.scheme;
  s.weight_dtype = w.quantized() ? w.qdata.dtype() : w.dense.dtype();
  s.out = w.out;
  s.in = w.in;
  s.group = w.group;
  s.zeros = w.scheme == QuantScheme::Int4 && w.zeros.defined();
  s.act_order = w.perm.defined();
  s.smooth = w.smooth.defined();
  s.act = w.act;
  s.act_dtype = act_dtype;
  s.device = device;
  return s;
}

std::string LinearSpec::describe() const {
  std::string s(quant_scheme_name(scheme));
  if (scheme == QuantScheme::Dense) s += " " + std::string(dtype_name(weight_dtype));
  if (group > 0 && group != in) s += " g" + std::to_string(group);
  if (zeros) s += " asym";
  if (act_order) s += " act-order";
  if (smooth) s += " smoothquant";
  s += act_name(act);
  s += ", x " + std::string(dtype_name(act_dtype)) + " on " + device.str();
  return s;
}

void register_linear_kernel(DeviceKind kind, std::unique_ptr<LinearKernel> kernel) {
  std::lock_guard lock(g_mu);
  auto& list = g_linear_kernels[int(kind)];
  list.push_back(std::move(kernel));
  std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a->rank() > b->rank(); });
}

std::vector<const LinearKernel*> linear_kernels(DeviceKind kind) {
  kernels(kind);  // registers the backends (throws for an absent device kind)
  std::lock_guard lock(g_mu);
  std::vector<const LinearKernel*> out;
  for (const auto& k : g_linear_kernels[int(kind)]) out.push_back(k.get());
  return out;
}

Linear::Linear(std::string name, const QuantWeight& w, const Tensor& bias, Device device, DType act_dtype)
    : name_(std::move(name)), spec_(LinearSpec::of(w, device, act_dtype)) {
  w.validate(name_);
  if (bias.defined() && (bias.ndim() != 1 || bias.dim(0) != w.out))
    fail(name_, "bias", "shape {} but the weight has {} output rows", bias.shape_str(), w.out);
  for (const LinearKernel* k : linear_kernels(device.kind))
    if (k->can_run(spec_)) {
      kernel_ = k;
      break;
    }
  if (!kernel_)
    fail(name_, "weight",
         "no linear kernel on {} runs {} (this scheme does not run on this device yet; use --device cpu)", device.str(),
         spec_.describe());
  packed_ = kernel_->pack(w, bias, spec_);
}

Linear Linear::stacked(std::string name, std::vector<Linear> parts) {
  KITE_CHECK(!parts.empty(), "stacked linear {} without parts", name);
  Linear l;
  l.name_ = std::move(name);
  l.spec_ = parts[0].spec_;
  l.spec_.out = 0;
  for (const Linear& p : parts) {
    KITE_CHECK(p.in() == l.spec_.in && p.spec_.device == l.spec_.device, "stacked linear {}: parts differ", l.name_);
    l.spec_.out += p.out();
  }
  l.parts_ = std::move(parts);
  return l;
}

std::string_view Linear::kernel_name() const {
  if (!parts_.empty()) return "stacked";
  return kernel_ ? kernel_->name() : std::string_view("none");
}

size_t Linear::bytes() const {
  size_t n = packed_ ? packed_->bytes : 0;
  for (const Linear& p : parts_) n += p.bytes();
  return n;
}

void Linear::forward(const Tensor& x, Tensor& y) const {
  KITE_CHECK(defined(), "linear {} used before it was made", name_);
  if (x.ndim() != 2 || x.dim(1) != spec_.in || y.ndim() != 2 || y.dim(0) != x.dim(0) || y.dim(1) != spec_.out)
    fail(name_, "x", "x {} and y {} do not fit a [{}, {}] weight", x.shape_str(), y.shape_str(), spec_.out, spec_.in);
  if (parts_.empty()) {
    kernel_->run(*packed_, x, y);
    return;
  }
  int64_t at = 0;
  for (const Linear& p : parts_) {
    Tensor part = Tensor::empty({x.dim(0), p.out()}, y.dtype(), y.device());  // [n, out_i]
    p.forward(x, part);
    y.slice(1, at, at + p.out()).copy_from(part);
    at += p.out();
  }
}

bool can_fuse_rows(std::span<const QuantWeight> parts) {
  if (parts.empty()) return false;
  const QuantWeight& a = parts[0];
  for (const QuantWeight& b : parts) {
    if (b.scheme != a.scheme || b.in != a.in || b.group != a.group || b.act != a.act) return false;
    if (b.input_scale != a.input_scale || !same_values(b.smooth, a.smooth) || !same_values(b.perm, a.perm))
      return false;
    if (a.scheme == QuantScheme::Dense && b.dense.dtype() != a.dense.dtype()) return false;
    if (a.scheme == QuantScheme::Int4 && b.zeros.defined() != a.zeros.defined()) return false;
  }
  return true;
}

QuantWeight fuse_rows(std::span<const QuantWeight> parts, const std::string& name) {
  if (!can_fuse_rows(parts))
    fail(name, "weight", "its parts ({}) differ in scheme, group, permutation or activation quantization", [&] {
      std::string s;
      for (const QuantWeight& p : parts) s += (s.empty() ? "" : ", ") + std::string(quant_scheme_name(p.scheme));
      return s;
    }());
  if (parts.size() == 1) return parts[0];
  const QuantWeight& a = parts[0];
  QuantWeight f = a;
  f.out = 0;
  for (const QuantWeight& p : parts) f.out += p.out;
  auto stack = [&](Tensor QuantWeight::*field, auto&& get) {
    std::vector<Tensor> ts;
    for (const QuantWeight& p : parts) ts.push_back(get(p, p.*field));
    f.*field = stack_rows(ts);
  };
  auto host = [](const QuantWeight&, const Tensor& t) { return t.device().is_cpu() ? t : t.to(kCpu); };
  switch (a.scheme) {
    case QuantScheme::Dense: stack(&QuantWeight::dense, host); break;
    case QuantScheme::Int8:
    case QuantScheme::Int4:
      stack(&QuantWeight::qdata, host);
      stack(&QuantWeight::scales, host);
      if (a.zeros.defined()) stack(&QuantWeight::zeros, host);
      break;
    case QuantScheme::Nf4:  // blocks never straddle rows (group divides in): flat scales concatenate
      stack(&QuantWeight::qdata, host);
      stack(&QuantWeight::scales, host);
      break;
    case QuantScheme::Fp8:
      stack(&QuantWeight::qdata, host);
      stack(&QuantWeight::scales, [&](const QuantWeight& p, const Tensor&) { return host(p, fp8_row_scales(p)); });
      break;
  }
  f.validate(name);
  return f;
}

Tensor fuse_bias(std::span<const Tensor> biases, std::span<const int64_t> outs) {
  bool any = false;
  for (const Tensor& b : biases) any = any || b.defined();
  if (!any) return {};
  std::vector<Tensor> parts;
  for (size_t i = 0; i < biases.size(); ++i) {
    const Tensor& b = biases[i];
    parts.push_back(b.defined() ? (b.device().is_cpu() ? b : b.to(kCpu)).to_dtype(DType::F32)
                                : Tensor::zeros({outs[i]}, DType::F32));
  }
  return stack_rows(parts);
}

QuantWeight shard_rows(const QuantWeight& w, int64_t begin, int64_t end, const std::string& name) {
  if (begin < 0 || end > w.out || begin > end)
    fail(name, "tensor_parallel_size", "rows [{}, {}) outside the weight's {} rows", begin, end, w.out);
  if (begin == 0 && end == w.out) return w;
  QuantWeight s = w;
  s.out = end - begin;
  auto rows = [&](const Tensor& t) { return t.slice(0, begin, end).contiguous(); };
  switch (w.scheme) {
    case QuantScheme::Dense: s.dense = rows(w.dense); break;
    case QuantScheme::Int8:
    case QuantScheme::Int4:
      s.qdata = rows(w.qdata);
      s.scales = rows(w.scales);
      if (w.zeros.defined()) s.zeros = rows(w.zeros);
      break;
    case QuantScheme::Nf4: {
      const int64_t per_row = w.in / w.group;
      s.qdata = rows(w.qdata);
      s.scales = w.scales.slice(0, begin * per_row, end * per_row).contiguous();
      break;
    }
    case QuantScheme::Fp8:
      s.qdata = rows(w.qdata);
      s.scales = w.scales.numel() == w.out ? rows(w.scales) : w.scales;
      break;
  }
  return s;
}

QuantWeight shard_cols(const QuantWeight& w, int64_t begin, int64_t end, const std::string& name) {
  if (begin < 0 || end > w.in || begin > end)
    fail(name, "tensor_parallel_size", "columns [{}, {}) outside the weight's {} columns", begin, end, w.in);
  if (begin == 0 && end == w.in) return w;
  if (w.perm.defined())
    fail(name, "g_idx",
         "act-order weights do not split by input columns over tensor-parallel ranks; quantize "
         "without act-order (desc_act) or use --tensor-parallel-size 1");
  QuantWeight s = w;
  s.in = end - begin;
  if (w.smooth.defined()) s.smooth = w.smooth.slice(0, begin, end).contiguous();
  auto cols = [&](const Tensor& t, int64_t b, int64_t e) { return t.slice(1, b, e).contiguous(); };
  const bool per_channel = w.group == w.in;
  if (w.quantized() && w.scheme != QuantScheme::Fp8 && !per_channel && (begin % w.group || end % w.group))
    fail(name, "group_size",
         "columns [{}, {}) do not align with quantization groups of {}; pick a "
         "--tensor-parallel-size that splits whole groups",
         begin, end, w.group);
  switch (w.scheme) {
    case QuantScheme::Dense: s.dense = cols(w.dense, begin, end); break;
    case QuantScheme::Int8:
    case QuantScheme::Int4: {
      const int64_t div = w.scheme == QuantScheme::Int4 ? 2 : 1;
      if (begin % div) fail(name, "tensor_parallel_size", "column {} splits a packed 4-bit byte", begin);
      s.qdata = cols(w.qdata, begin / div, end / div);
      if (per_channel) {
        s.group = s.in;
      } else {
        s.scales = cols(w.scales, begin / w.group, end / w.group);
        if (w.zeros.defined()) s.zeros = cols(w.zeros, begin / w.group, end / w.group);
      }
      break;
    }
    case QuantScheme::Nf4: {
      if (begin % 2) fail(name, "tensor_parallel_size", "column {} splits a packed 4-bit byte", begin);
      s.qdata = cols(w.qdata, begin / 2, end / 2);
      s.scales = cols(w.scales.reshape({w.out, w.in / w.group}), begin / w.group, end / w.group).reshape({-1});
      break;
    }
    case QuantScheme::Fp8: s.qdata = cols(w.qdata, begin, end); break;
  }
  s.validate(name);
  return s;
}

}  // namespace kite
