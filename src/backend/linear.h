#pragma once
// A linear layer, y = x @ W^T (+ bias), that owns its weight and the kernel
// chosen for its device at load.
//
// Kernels register per device kind (register_linear_kernel, called from the
// backend's register function: one line per kernel) and say what they can
// run (LinearKernel::can_run over a LinearSpec: scheme, group, zeros,
// act-order, activation quantization, weight and activation dtypes,
// device). Linear tries them in rank order, fastest first, takes the first
// that can run the weight and lets it pack the weight once (repacking,
// moving to the device, precomputing permutations). A weight no kernel of
// the device can run is a load-time kite::Error naming the tensor, the
// scheme and the device.
//
// Fusing (Q/K/V, gate/up: weights sharing one input, stacked by output
// rows) and sharding (tensor parallelism) are operations on the logical
// weights (core/quant_weight.h) done before a Linear is made: fuse_rows,
// shard_rows, shard_cols below.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/device.h"
#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite {

// What a kernel is asked to run.
struct LinearSpec {
  QuantScheme scheme = QuantScheme::Dense;
  DType weight_dtype = DType::F32;  // Dense: the weight's dtype; quantized: the code tensor's
  int64_t out = 0, in = 0, group = 0;
  bool zeros = false;      // Int4 with stored zero points (asymmetric)
  bool act_order = false;  // a column permutation (GPTQ act-order)
  bool smooth = false;     // SmoothQuant divisors of x
  ActQuant act = ActQuant::None;
  DType act_dtype = DType::F32;  // x and y (y may also be F32 for logits)
  Device device;

  static LinearSpec of(const QuantWeight& w, Device device, DType act_dtype);
  // "int4 g128 asym act-order, x bf16 on cuda:0".
  std::string describe() const;
};

// A weight in the form one kernel reads, made once by LinearKernel::pack.
struct PackedWeight {
  virtual ~PackedWeight() = default;
  size_t bytes = 0;  // device memory it holds (weights, scales, bias)
};

class LinearKernel {
 public:
  virtual ~LinearKernel() = default;
  virtual std::string_view name() const = 0;
  // Kernels of a device are tried highest rank first.
  virtual int rank() const { return 0; }
  virtual bool can_run(const LinearSpec& spec) const = 0;
  // w (on the host) and bias ([out] or undefined) packed for spec.device.
  virtual std::unique_ptr<PackedWeight> pack(const QuantWeight& w, const Tensor& bias,
                                             const LinearSpec& spec) const = 0;
  // y = x @ W^T (+ bias). x: [n, in] in spec.act_dtype; y: [n, out] in
  // spec.act_dtype (or F32 where the kernel allows it, for logits).
  virtual void run(const PackedWeight& w, const Tensor& x, Tensor& y) const = 0;
};

// Adds a kernel to a device kind's list (backends call this while they
// register their ops).
void register_linear_kernel(DeviceKind kind, std::unique_ptr<LinearKernel> kernel);
// The kernels of a device kind, highest rank first.
std::vector<const LinearKernel*> linear_kernels(DeviceKind kind);

class Linear {
 public:
  Linear() = default;
  // Picks the kernel for `w` on `device` with activations in act_dtype and
  // packs the weight. bias: [out] (any float dtype) or undefined. `name`
  // (e.g. "model.layers.3.self_attn.qkv") names the tensor in errors.
  Linear(std::string name, const QuantWeight& w, const Tensor& bias, Device device, DType act_dtype);

  // Several linears sharing an input whose weights cannot share one layout
  // (quantized differently): each runs its own kernel into its rows of the
  // output (an intermediate per part, so not for graphs).
  static Linear stacked(std::string name, std::vector<Linear> parts);

  bool defined() const { return kernel_ != nullptr || !parts_.empty(); }
  const std::string& name() const { return name_; }
  int64_t out() const { return spec_.out; }
  int64_t in() const { return spec_.in; }
  const LinearSpec& spec() const { return spec_; }
  std::string_view kernel_name() const;
  // Whether forward can be recorded in a device graph (stacked ones allocate).
  bool graph_safe() const { return parts_.empty(); }
  size_t bytes() const;  // what the packed weight holds on its device

  // y = x @ W^T (+ bias); shapes and dtypes as LinearKernel::run.
  void forward(const Tensor& x, Tensor& y) const;

 private:
  std::string name_;
  LinearSpec spec_;
  const LinearKernel* kernel_ = nullptr;
  std::shared_ptr<const PackedWeight> packed_;
  std::vector<Linear> parts_;  // stacked()
};

// Weights sharing an input stacked by output rows into one [sum out, in]
// weight of the same scheme (fused Q/K/V or gate/up). Throws kite::Error
// naming `name` when the parts cannot share one layout (different schemes,
// groups, permutations, activation quantization or smoothing).
QuantWeight fuse_rows(std::span<const QuantWeight> parts, const std::string& name);
// Whether fuse_rows would succeed.
bool can_fuse_rows(std::span<const QuantWeight> parts);
// Biases of fused parts stacked (undefined when none has one; zeros fill
// the parts without).
Tensor fuse_bias(std::span<const Tensor> biases, std::span<const int64_t> outs);
// Output rows [begin, end) (a column-parallel shard).
QuantWeight shard_rows(const QuantWeight& w, int64_t begin, int64_t end, const std::string& name);
// Input columns [begin, end) (a row-parallel shard); group-aligned for
// quantized weights; act-order weights are refused.
QuantWeight shard_cols(const QuantWeight& w, int64_t begin, int64_t end, const std::string& name);

}  // namespace kite
