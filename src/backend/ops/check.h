#pragma once
// Argument checks shared by the op dispatchers. Each throws
// kite::Error("op <name>", "<arg>", "expected ..., got ...").
#include <initializer_list>
#include <string>

#include "backend/kernels.h"
#include "core/error.h"
#include "core/tensor.h"

namespace kite::ops::detail {

class OpCheck {
 public:
  explicit OpCheck(std::string op) : op_(std::move(op)), source_("op " + op_) {}

  // Defined, contiguous, `ndim` dims, one of `dtypes`; `layout` names the
  // dims for messages, e.g. "[n, k]".
  void tensor(const char* arg, const Tensor& t, int ndim, const char* layout,
              std::initializer_list<DType> dtypes) const;
  // t.dim(i) == want; `what` says where `want` came from ("k of x").
  void dim(const char* arg, const Tensor& t, int i, int64_t want, const std::string& what) const;
  // Same device as `ref` (named `ref_arg`).
  void same_device(const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) const;
  // Output `arg` must not share memory with input `other`; with allow_same,
  // exactly the same memory (an in-place elementwise op) is accepted.
  void no_overlap(const char* arg, const Tensor& t, const char* other, const Tensor& o, bool allow_same) const;
  [[noreturn]] void fail_arg(const std::string& arg, const std::string& message) const;
  // KV-cache slots (slot_mapping, [n] I32): each -1 or in [0, n_slots), no
  // slot twice. Device-side slots are copied to the host for the check,
  // unless indices are trusted (ops/trusted.h).
  void cache_slots(const Tensor& slot_mapping, int64_t n_slots) const;
  // Rotary frequencies `inv_freq` on ref's device: F32, either [r] (one
  // table for every token) or [n_tokens, r] (row t for token t, e.g. dynamic
  // NTK scaling per sequence), with 2r <= head_dim. `n_of` says where
  // n_tokens came from ("n_tokens of q").
  void inv_freq(const Tensor& inv_freq, int64_t n_tokens, const std::string& n_of, int64_t head_dim,
                const char* ref_arg, const Tensor& ref) const;

  // The device's kernel entry, or an Error when that device lacks it.
  template <typename Fn>
  Fn kernel(Device device, Fn Kernels::*entry) const {
    Fn fn = kernels(device.kind).*entry;
    if (!fn) fail_arg("device", fmt::format("{} is not implemented on {}", op_, device_kind_name(device)));
    return fn;
  }

 private:
  static std::string device_kind_name(Device device);
  std::string op_;
  std::string source_;
};

}  // namespace kite::ops::detail
