// CUDA's weight-only quantized linear (W4A16, W8A16): Int4 (groups that are
// multiples of 32, or per channel; symmetric or with F32 zeros; with or
// without an act-order permutation) and Int8 (groups that are multiples of
// 16, or per channel; with or without a permutation), BF16 activations, BF16
// or F32 output (logits), optional bias added in F32 before the one rounding.
// Device code: linear_wq_kernel.cu.
//
// Packed on the device (made once by pack, on the host, then copied):
//   q       [out, kp / 2] U8 (Int4: Kite's nibble order, low nibble = even
//           packed column) or [out, kp] I8 (Int8); kp = in rounded up to 32,
//           padding codes 0, so every row is a whole number of 16-byte chunks
//   scales  [out, in / group] F32, as the checkpoint has them
//   zeros   [out, in / group] F32 (Int4 asymmetric; undefined when every zero
//           is 8, which runs a kernel without the subtraction of z)
//   perm    [in] I32 (act-order, checked to be a permutation) or undefined
//   bias    [out] F32 or undefined
// The weight stays in packed-column order: groups run over packed columns.
//
// Two paths, by the number of tokens n:
//  - n <= kGemvMaxN: a GEMV (wq_gemv_kernel): 4 output rows per CTA, its 4
//    warps splitting K; 16-byte loads of codes coalesced along K, dequantized
//    in registers bitwise as dequantize() computes W in F32, multiplied with
//    all n rows of x (each weight byte read once), F32 sums reduced by warp
//    shuffles and shared memory, bias added, rounded once. x is read in place
//    when in % 32 == 0, its rows 16-byte aligned and there is no permutation;
//    otherwise it is first gathered (x[:, perm], zero-padded to kp columns)
//    into a per-device scratch of [kGemvMaxN, kp] BF16.
//  - n > kGemvMaxN: the weight is dequantized to BF16 (logical column order:
//    the permutation is applied to W's columns, x is used as is) into a
//    per-device scratch of [out, in] BF16, then cuBLASLt (ops::linear), then
//    the bias (launch_add_bias). W is rounded to BF16 on this path, and a
//    biased BF16 output is rounded twice.
// kGemvMaxN = 16 is a first guess, to be tuned by measurement
// (bench/cuda_linear_wq_bench.cpp): the GEMV's FMAs grow with n while the
// dequantize + GEMM costs about a read of the codes and a write and read of
// the BF16 weight.
//
// CUDA graphs: run() allocates nothing and never synchronizes. The two
// scratch buffers are per device, shared by every Linear of this kernel
// (one stream per device orders their uses) and sized by pack(), at load,
// for the largest Linear packed so far. A buffer outgrown by a later pack is
// kept alive (a graph captured before may still point at it), never freed.
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/linear.h"
#include "backend/ops/linear.h"
#include "core/error.h"

namespace kite::cuda {

// linear_wq_kernel.cu. kind: 0 Int4 symmetric, 1 Int4 with zeros, 2 Int8.
cudaError_t launch_wq_gemv(int kind, const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros,
                           int64_t ngroups, int64_t group, int64_t in, const void* x, int64_t ldx, const float* bias,
                           void* y, bool y_f32, int64_t n, int64_t out, cudaStream_t stream);
cudaError_t launch_wq_gather(const void* x, int64_t ldx, const int32_t* perm, void* xs, int64_t n, int64_t in,
                             int64_t kp, cudaStream_t stream);
cudaError_t launch_wq_dequant(int kind, const uint8_t* q, int64_t q_ld, const float* scales, const float* zeros,
                              int64_t ngroups, int64_t group, const int32_t* perm, void* w, int64_t out, int64_t in,
                              cudaStream_t stream);

namespace {

// The largest n the GEMV runs (the kernel's limit too); see the file comment.
constexpr int64_t kGemvMaxN = 16;
constexpr int kMaxDevices = 64;
constexpr int kInt4Sym = 0, kInt4Asym = 1, kInt8 = 2;

struct WqPacked : PackedWeight {
  int kind = kInt4Sym;
  int64_t out = 0, in = 0, group = 0, ngroups = 0, kp = 0;
  Device device;
  Tensor q, scales, zeros, perm, bias;  // on the device (file comment)
  int64_t q_ld() const { return kind == kInt8 ? kp : kp / 2; }
};

// A per-device BF16 buffer that only grows (at pack time), shared by every
// Linear of this kernel on the device.
class Scratch {
 public:
  void reserve(int64_t elems, Device device) {
    std::lock_guard lock(mu_);
    if (buf_.defined() && buf_.numel() >= elems) return;
    if (buf_.defined()) retired_.push_back(std::move(buf_));  // a captured graph may still use it
    buf_ = Tensor::empty({elems}, DType::BF16, device);
  }
  Tensor view(const Shape& shape) {
    std::lock_guard lock(mu_);
    const int64_t n = shape_numel(shape);
    KITE_CHECK(buf_.defined() && buf_.numel() >= n, "cuda_wq scratch of {} elements used before pack reserved it", n);
    return buf_.slice(0, 0, n).reshape(shape);
  }

 private:
  std::mutex mu_;
  Tensor buf_;
  std::vector<Tensor> retired_;
};

enum class ScratchKind { X = 0, W = 1 };

// Lives as long as the process (never destroyed: tensors released during
// static destruction would outlive the pool's users).
Scratch& scratch(int device, ScratchKind kind) {
  static std::array<Scratch*, 2 * kMaxDevices> all{};
  static std::mutex mu;
  if (device < 0 || device >= kMaxDevices) fail("cuda", "device", "device index {} out of range", device);
  std::lock_guard lock(mu);
  Scratch*& s = all[size_t(2 * device + int(kind))];
  if (!s) s = new Scratch;
  return *s;
}

Tensor host_contiguous(const Tensor& t) { return t.device().is_cpu() ? t.contiguous() : t.to(kCpu); }

// Rows of `bytes_per_row` bytes copied into rows of `padded` bytes (zeros after).
Tensor pad_rows(const Tensor& codes, int64_t rows, int64_t bytes_per_row, int64_t padded) {
  const Tensor h = host_contiguous(codes);
  if (bytes_per_row == padded) return h;
  Tensor out = Tensor::zeros({rows, padded}, h.dtype());
  const auto* src = static_cast<const uint8_t*>(h.data());
  auto* dst = static_cast<uint8_t*>(out.data());
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * padded, src + r * bytes_per_row, size_t(bytes_per_row));
  return out;
}

class CudaWqLinear final : public LinearKernel {
 public:
  std::string_view name() const override { return "cuda_wq_a16"; }
  bool can_run(const LinearSpec& s) const override {
    if (s.device.kind != DeviceKind::CUDA || s.act_dtype != DType::BF16 || s.act != ActQuant::None || s.smooth)
      return false;
    if (s.out < 1 || s.in < 1 || s.group < 1 || s.out > 0x7fffffff || s.in > 0x3fffffff) return false;
    // Every 16-byte chunk of codes (32 Int4 / 16 Int8 columns) in one group.
    if (s.scheme == QuantScheme::Int4) return s.weight_dtype == DType::U8 && (s.group == s.in || s.group % 32 == 0);
    if (s.scheme == QuantScheme::Int8) return s.weight_dtype == DType::I8 && (s.group == s.in || s.group % 16 == 0);
    return false;
  }

  std::unique_ptr<PackedWeight> pack(const QuantWeight& w, const Tensor& bias, const LinearSpec& s) const override {
    auto p = std::make_unique<WqPacked>();
    p->out = w.out;
    p->in = w.in;
    p->group = w.group;
    p->ngroups = w.in / w.group;
    p->kp = (w.in + 31) / 32 * 32;
    p->device = s.device;
    const Device d = s.device;
    if (w.scheme == QuantScheme::Int8) {
      p->kind = kInt8;
      p->q = pad_rows(w.qdata, w.out, w.in, p->kp).to(d);
    } else {
      const Tensor z = host_contiguous(w.zeros);
      const float* zp = z.data_as<const float>();
      bool sym = true;
      for (int64_t i = 0; i < z.numel() && sym; ++i) sym = zp[i] == 8.0f;
      p->kind = sym ? kInt4Sym : kInt4Asym;
      p->q = pad_rows(w.qdata, w.out, w.in / 2, p->kp / 2).to(d);
      if (!sym) p->zeros = z.to(d);
    }
    p->scales = host_contiguous(w.scales).to(d);
    if (w.perm.defined()) {
      const Tensor h = host_contiguous(w.perm);
      const int32_t* pp = h.data_as<const int32_t>();
      std::vector<bool> seen(size_t(w.in), false);
      for (int64_t j = 0; j < w.in; ++j) {
        if (pp[j] < 0 || pp[j] >= w.in || seen[size_t(pp[j])])
          fail("linear", "perm", "entry {} is {}: not a permutation of 0..{}; re-export the act-order checkpoint", j,
               pp[j], w.in - 1);
        seen[size_t(pp[j])] = true;
      }
      p->perm = h.to(d);
    }
    if (bias.defined()) p->bias = host_contiguous(bias).to_dtype(DType::F32).to(d);
    for (const Tensor* t : {&p->q, &p->scales, &p->zeros, &p->perm, &p->bias})
      if (t->defined()) p->bytes += t->nbytes();
    // Scratch for both paths, sized now so that run() never allocates.
    scratch(d.index, ScratchKind::X).reserve(kGemvMaxN * p->kp, d);
    scratch(d.index, ScratchKind::W).reserve(w.out * w.in, d);
    return p;
  }

  void run(const PackedWeight& pw, const Tensor& x, Tensor& y) const override {
    const auto& p = static_cast<const WqPacked&>(pw);
    if (x.dtype() != DType::BF16 || x.device() != p.device || x.ndim() != 2 || x.dim(1) != p.in || x.strides()[1] != 1)
      fail("linear", "x", "expected BF16 [n, {}] with contiguous rows on {}, got {} {} on {}", p.in, p.device.str(),
           dtype_name(x.dtype()), x.shape_str(), x.device().str());
    if ((y.dtype() != DType::BF16 && y.dtype() != DType::F32) || y.device() != p.device || !y.is_contiguous() ||
        y.ndim() != 2 || y.dim(0) != x.dim(0) || y.dim(1) != p.out)
      fail("linear", "y", "expected contiguous BF16 or F32 [{}, {}] on {}, got {} {} on {}", x.dim(0), p.out,
           p.device.str(), dtype_name(y.dtype()), y.shape_str(), y.device().str());
    const int64_t n = x.dim(0);
    if (n == 0) return;
    const int dev = p.device.index;
    set_device(dev);
    cudaStream_t stream = current_stream(dev);
    const auto* q = static_cast<const uint8_t*>(p.q.data());
    const float* scales = p.scales.data_as<const float>();
    const float* zeros = p.zeros.defined() ? p.zeros.data_as<const float>() : nullptr;
    const int32_t* perm = p.perm.defined() ? p.perm.data_as<const int32_t>() : nullptr;
    const float* bias = p.bias.defined() ? p.bias.data_as<const float>() : nullptr;
    if (n <= kGemvMaxN) {
      const void* xp = x.data();
      int64_t ldx = x.strides()[0];
      const bool direct = !perm && p.in % 32 == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0 && ldx % 8 == 0;
      if (!direct) {
        Tensor xs = scratch(dev, ScratchKind::X).view({n, p.kp});  // [n, kp]
        check_cuda(launch_wq_gather(xp, ldx, perm, xs.data(), n, p.in, p.kp, stream), "cuda_wq gather kernel");
        xp = xs.data();
        ldx = p.kp;
      }
      check_cuda(launch_wq_gemv(p.kind, q, p.q_ld(), scales, zeros, p.ngroups, p.group, p.in, xp, ldx, bias, y.data(),
                                y.dtype() == DType::F32, n, p.out, stream),
                 "cuda_wq gemv kernel");
      return;
    }
    Tensor wd = scratch(dev, ScratchKind::W).view({p.out, p.in});  // [out, in] BF16, logical column order
    check_cuda(
        launch_wq_dequant(p.kind, q, p.q_ld(), scales, zeros, p.ngroups, p.group, perm, wd.data(), p.out, p.in, stream),
        "cuda_wq dequantize kernel");
    ops::linear(x, wd, nullptr, y);
    if (bias)
      check_cuda(launch_add_bias(y.data(), y.dtype(), bias, DType::F32, n, p.out, stream), "cuda_wq bias kernel");
  }
};

}  // namespace

std::unique_ptr<LinearKernel> make_wq_linear_kernel() { return std::make_unique<CudaWqLinear>(); }

}  // namespace kite::cuda
