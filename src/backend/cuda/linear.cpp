// ops::linear on CUDA through cuBLASLt: y = x @ w^T (+ bias), BF16 operands,
// F32 accumulation (compute type 32F; split-K partial sums only in F32), BF16
// or F32 output (F32 for the lm_head's logits).
//
// Row-major y [n, m] is column-major y^T [m, n], and y^T = w x^T: A = w read
// as column-major [k, m] with op T, B = x as column-major [k, n] with op N,
// D = y as column-major [m, n] (the "TN" layout cuBLAS prefers). A bias
// whose dtype equals y's goes through the BIAS epilogue; otherwise (BF16 bias,
// F32 y: cuBLASLt wants the bias in y's dtype) a small kernel adds it after.
//
// One cuBLASLt handle and one 32 MiB workspace (from the memory pool) per
// device, made on the first linear there. The algorithm comes from
// cublasLtMatmulAlgoGetHeuristic, asked once per (n bucket: 1, 2, 4, ...,
// 4096, then multiples of 4096; m; k; y dtype; bias; alignment) at the
// bucket's n, and validated for each exact n with cublasLtMatmulAlgoCheck
// (falling back to a query at that n); descriptors are cached per exact shape.
// Shapes cuBLASLt has no algorithm for (odd leading dimensions or pointers)
// run a plain warp-per-output kernel (linear_fallback.cu).
// Launches are serialized per device by a mutex and go to current_stream.
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <bit>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/memory_pool.h"

namespace kite::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr size_t kMaxPlans = 4096;  // exact shapes cached per device before the cache is cleared
constexpr int kMaxDevices = 64;

cudaDataType_t cuda_type(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

int64_t n_bucket(int64_t n) {
  if (n <= 1) return 1;
  if (n <= 4096) return int64_t(std::bit_ceil(uint64_t(n)));
  return (n + 4095) / 4096 * 4096;
}

// The largest of 16, 8, 4, 2 dividing the address (1 for odd addresses).
int alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 16;
  while (al > 1 && a % uintptr_t(al) != 0) al /= 2;
  return al;
}

struct ShapeKey {
  int64_t n, m, k;
  DType y;
  bool bias;
  int align;
  bool operator==(const ShapeKey&) const = default;
};
struct ShapeKeyHash {
  size_t operator()(const ShapeKey& s) const {
    size_t h = std::hash<int64_t>()(s.n);
    for (int64_t v : {s.m, s.k, int64_t(s.y), int64_t(s.bias), int64_t(s.align)})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

// A matmul descriptor and the A, B, D layouts for one exact shape.
struct Layouts {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  Layouts() = default;
  Layouts(const Layouts&) = delete;
  Layouts& operator=(const Layouts&) = delete;
  ~Layouts() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

std::unique_ptr<Layouts> make_layouts(const ShapeKey& s) {
  auto l = std::make_unique<Layouts>();
  check_cublas(cublasLtMatmulDescCreate(&l->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_cublas(cublasLtMatmulDescSetAttribute(l->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
  check_cublas(cublasLtMatmulDescSetAttribute(l->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
  if (s.bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    check_cublas(cublasLtMatmulDescSetAttribute(l->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "EPILOGUE");
  }
  check_cublas(cublasLtMatrixLayoutCreate(&l->a, CUDA_R_16BF, uint64_t(s.k), uint64_t(s.m), s.k), "layout of w");
  check_cublas(cublasLtMatrixLayoutCreate(&l->b, CUDA_R_16BF, uint64_t(s.k), uint64_t(s.n), s.k), "layout of x");
  check_cublas(cublasLtMatrixLayoutCreate(&l->d, cuda_type(s.y), uint64_t(s.m), uint64_t(s.n), s.m), "layout of y");
  return l;
}

void set_bias_pointer(const Layouts& l, const void* bias) {
  check_cublas(cublasLtMatmulDescSetAttribute(l.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
               "BIAS_POINTER");
}

struct Algo {
  cublasLtMatmulAlgo_t algo;
  size_t workspace = 0;
};

struct Plan {
  std::unique_ptr<Layouts> layouts;
  Algo algo;
  bool fallback = false;  // cuBLASLt has no algorithm: linear_fallback.cu
};

// Per-device cuBLASLt state.
struct Context {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::unordered_map<ShapeKey, Algo, ShapeKeyHash> algos;  // keyed with n = the bucket
  std::unordered_map<ShapeKey, Plan, ShapeKeyHash> plans;  // keyed with the exact n
};

Context& context(int device) {
  static std::array<Context*, kMaxDevices> contexts{};
  static std::mutex mu;
  if (device < 0 || device >= kMaxDevices) fail("cuda", "device", "device index {} out of range", device);
  std::lock_guard<std::mutex> lock(mu);
  if (!contexts[size_t(device)]) contexts[size_t(device)] = new Context;  // lives as long as the process
  return *contexts[size_t(device)];
}

// The heuristic's best algorithm for `l`, or false when it has none.
bool query_heuristic(const Context& c, const Layouts& l, int align, Algo* out) {
  cublasLtMatmulPreference_t pref = nullptr;
  check_cublas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  // Split-K partial sums stay in F32 (the compute type), never in a BF16 output.
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  const uint32_t al = uint32_t(align);
  cublasStatus_t st =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                              sizeof(reduction));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(c.handle, l.op, l.a, l.b, l.d, l.d, pref, 1, &result, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  // No algorithm (or a layout cuBLASLt rejects): the caller uses the fallback kernel.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE ||
      (st == CUBLAS_STATUS_SUCCESS && count == 0))
    return false;
  check_cublas(st, "cublasLtMatmulAlgoGetHeuristic");
  out->algo = result.algo;
  out->workspace = result.workspaceSize;
  return true;
}

// The cached plan for `s`, made on first use (caller holds c.mu).
Plan& plan_for(Context& c, const ShapeKey& s, const void* bias) {
  if (auto it = c.plans.find(s); it != c.plans.end()) return it->second;
  if (c.plans.size() >= kMaxPlans) c.plans.clear();
  Plan p;
  p.layouts = make_layouts(s);
  if (s.bias && s.y == DType::BF16 && s.m % 8 != 0) {
    // Measured on H200 with cuBLASLt 13.0: for x [129, 256] @ w [3, 256]^T the
    // BIAS epilogue added the bias to a product already rounded to BF16 (errors
    // of several BF16 ulps). A BF16 output whose rows are not 16-byte multiples
    // (never a model's projection) takes the fallback kernel, which rounds once.
    p.fallback = true;
    return c.plans.emplace(s, std::move(p)).first->second;
  }
  if (s.bias) set_bias_pointer(*p.layouts, bias);  // the heuristic reads its alignment
  ShapeKey bucket = s;
  bucket.n = n_bucket(s.n);
  bool have = false;
  Algo algo;
  if (auto it = c.algos.find(bucket); it != c.algos.end()) {
    algo = it->second;
    have = true;
  } else {
    std::unique_ptr<Layouts> lb = bucket.n == s.n ? nullptr : make_layouts(bucket);
    const Layouts& q = lb ? *lb : *p.layouts;
    if (lb && s.bias) set_bias_pointer(*lb, bias);
    if (query_heuristic(c, q, s.align, &algo)) {
      c.algos.emplace(bucket, algo);
      have = true;
    }
  }
  if (have) {  // the bucket's algorithm must also run this exact n
    cublasLtMatmulHeuristicResult_t r{};
    const cublasStatus_t st = cublasLtMatmulAlgoCheck(c.handle, p.layouts->op, p.layouts->a, p.layouts->b, p.layouts->d,
                                                      p.layouts->d, &algo.algo, &r);
    have = st == CUBLAS_STATUS_SUCCESS && r.workspaceSize <= kWorkspaceBytes;
    if (have) algo.workspace = r.workspaceSize;
  }
  if (!have) have = query_heuristic(c, *p.layouts, s.align, &algo);
  p.algo = algo;
  p.fallback = !have;
  return c.plans.emplace(s, std::move(p)).first->second;
}

}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const int64_t n = x.dim(0), k = x.dim(1), m = w.dim(0);
  if (n == 0 || m == 0) return;
  const int device = x.device().index;
  set_device(device);
  cudaStream_t stream = current_stream(device);
  if (k == 0) {  // an empty sum: y = bias or 0
    check_cuda(cudaMemsetAsync(y.data(), 0, y.nbytes(), stream), "cudaMemsetAsync");
    if (bias)
      check_cuda(launch_add_bias(y.data(), y.dtype(), bias->data(), bias->dtype(), n, m, stream), "bias kernel");
    return;
  }
  const bool epilogue = bias && bias->dtype() == y.dtype();
  int align = std::min({alignment(x.data()), alignment(w.data()), alignment(y.data())});
  if (epilogue) align = std::min(align, alignment(bias->data()));
  const ShapeKey key{n, m, k, y.dtype(), epilogue, align};
  Context& c = context(device);
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.workspace) c.workspace = memory_pool(device).allocate(kWorkspaceBytes);  // kept for the process
    if (!c.handle) check_cublas(cublasLtCreate(&c.handle), "cublasLtCreate");
    Plan& p = plan_for(c, key, epilogue ? bias->data() : nullptr);
    if (!p.fallback) {
      if (epilogue) set_bias_pointer(*p.layouts, bias->data());
      const float alpha = 1.0f, beta = 0.0f;
      const cublasStatus_t st = cublasLtMatmul(c.handle, p.layouts->op, &alpha, w.data(), p.layouts->a, x.data(),
                                               p.layouts->b, &beta, y.data(), p.layouts->d, y.data(), p.layouts->d,
                                               &p.algo.algo, c.workspace, p.algo.workspace, stream);
      // An algorithm that refuses this shape at launch (nothing was queued):
      // the shape takes the fallback kernel from now on.
      if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE)
        p.fallback = true;
      else
        check_cublas(st, "cublasLtMatmul");
    }
    if (p.fallback) {
      check_cuda(launch_linear_fallback(x.data(), w.data(), bias ? bias->data() : nullptr,
                                        bias ? bias->dtype() : DType::F32, y.data(), y.dtype(), n, m, k, stream),
                 "linear fallback kernel");
      return;
    }
  }
  if (bias && !epilogue)
    check_cuda(launch_add_bias(y.data(), y.dtype(), bias->data(), bias->dtype(), n, m, stream), "bias kernel");
}

}  // namespace kite::cuda
