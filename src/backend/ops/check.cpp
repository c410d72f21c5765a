#include "backend/ops/check.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "backend/ops/trusted.h"

namespace kite::ops::detail {

namespace {
std::string dtype_list(std::initializer_list<DType> dtypes) {
  std::string s;
  size_t i = 0;
  for (DType d : dtypes) {
    if (i > 0) s += i + 1 == dtypes.size() ? " or " : ", ";
    s += dtype_name(d);
    ++i;
  }
  return s;
}
}  // namespace

void OpCheck::fail_arg(const std::string& arg, const std::string& message) const { throw Error(source_, arg, message); }

void OpCheck::cache_slots(const Tensor& slot_mapping, int64_t n_slots) const {
  if (!slot_mapping.device().is_cpu() && indices_trusted()) return;
  const Tensor host = slot_mapping.device().is_cpu() ? slot_mapping : slot_mapping.to(kCpu);
  const int32_t* slots = host.data_as<const int32_t>();
  const int64_t n = host.dim(0);
  std::vector<int32_t> used;
  used.reserve(size_t(n));
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] == -1) continue;
    if (slots[t] < 0 || slots[t] >= n_slots)
      fail_arg("slot_mapping", fmt::format("expected slots in [0, {}) (num_blocks * block_size) or -1, got {} at "
                                           "index {}",
                                           n_slots, slots[t], t));
    used.push_back(slots[t]);
  }
  std::sort(used.begin(), used.end());
  const auto dup = std::adjacent_find(used.begin(), used.end());
  if (dup != used.end())
    fail_arg("slot_mapping", fmt::format("expected distinct slots, got slot {} more than once", *dup));
}

void OpCheck::inv_freq(const Tensor& inv_freq, int64_t n_tokens, const std::string& n_of, int64_t head_dim,
                       const char* ref_arg, const Tensor& ref) const {
  if (!inv_freq.defined() || (inv_freq.ndim() != 1 && inv_freq.ndim() != 2))
    fail_arg("inv_freq", fmt::format("expected a 1-D tensor [r] or a 2-D tensor [n_tokens, r] (a row per token), "
                                     "got {}",
                                     inv_freq.defined() ? "shape " + inv_freq.shape_str() : "an undefined tensor"));
  if (inv_freq.ndim() == 1)
    tensor("inv_freq", inv_freq, 1, "[r]", {DType::F32});
  else
    tensor("inv_freq", inv_freq, 2, "[n_tokens, r]", {DType::F32});
  same_device("inv_freq", inv_freq, ref_arg, ref);
  if (inv_freq.ndim() == 2) dim("inv_freq", inv_freq, 0, n_tokens, n_of);
  const int64_t r = inv_freq.dim(inv_freq.ndim() - 1);
  if (2 * r > head_dim)
    fail_arg("inv_freq", fmt::format("expected at most head_dim / 2 = {} frequencies, got shape {}", head_dim / 2,
                                     inv_freq.shape_str()));
}

void OpCheck::tensor(const char* arg, const Tensor& t, int ndim, const char* layout,
                     std::initializer_list<DType> dtypes) const {
  if (!t.defined()) fail_arg(arg, fmt::format("expected a {}-D tensor {}, got an undefined tensor", ndim, layout));
  if (t.ndim() != ndim)
    fail_arg(arg, fmt::format("expected a {}-D tensor {}, got shape {}", ndim, layout, t.shape_str()));
  bool ok = false;
  for (DType d : dtypes) ok = ok || d == t.dtype();
  if (!ok) fail_arg(arg, fmt::format("expected dtype {}, got {}", dtype_list(dtypes), dtype_name(t.dtype())));
  if (!t.is_contiguous())
    fail_arg(arg, fmt::format("expected a contiguous tensor, got shape {} with strides {}", t.shape_str(),
                              shape_to_string(t.strides())));
}

void OpCheck::dim(const char* arg, const Tensor& t, int i, int64_t want, const std::string& what) const {
  if (t.dim(i) != want)
    fail_arg(arg, fmt::format("expected dim {} = {} ({}), got shape {}", i, want, what, t.shape_str()));
}

void OpCheck::same_device(const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) const {
  if (t.device() != ref.device())
    fail_arg(arg, fmt::format("expected a tensor on {} (the device of {}), got {}", ref.device().str(), ref_arg,
                              t.device().str()));
}

void OpCheck::no_overlap(const char* arg, const Tensor& t, const char* other, const Tensor& o, bool allow_same) const {
  if (t.device() != o.device() || t.nbytes() == 0 || o.nbytes() == 0) return;
  const char* a = static_cast<const char*>(t.data());
  const char* b = static_cast<const char*>(o.data());
  if (allow_same && a == b && t.nbytes() == o.nbytes()) return;
  if (a < b + o.nbytes() && b < a + t.nbytes())
    fail_arg(arg, fmt::format("expected memory disjoint from {}{}, got an overlapping tensor", other,
                              allow_same ? " (or exactly the same tensor)" : ""));
}

std::string OpCheck::device_kind_name(Device device) { return device.is_cpu() ? "cpu" : "cuda"; }

}  // namespace kite::ops::detail

namespace kite::ops {

namespace {
thread_local int g_trusted_depth = 0;
}

TrustedIndices::TrustedIndices() { ++g_trusted_depth; }
TrustedIndices::~TrustedIndices() { --g_trusted_depth; }
bool indices_trusted() { return g_trusted_depth > 0; }

}  // namespace kite::ops
