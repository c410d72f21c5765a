// rms_norm and the fused add_rms_norm: one CTA per row, F32 math, 16-byte
// packs when the rows are 16-byte aligned, warp-shuffle block reduction.
//
// The arithmetic follows the CPU kernel: the sum of squares in F32 (a tree
// here, a vector sum there), mean and inverse square root in F64 rounded to
// F32, then (x * inv) * w in F32 and one rounding to the output dtype.
// Both passes give each thread the same elements, so out may alias x, and in
// add_rms_norm the second pass reads back the residual the same thread wrote.
#include <type_traits>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/dense_common.cuh"

namespace kite::cuda {

namespace {

using dense::bf16;
using dense::from_float;
using dense::load_pack;
using dense::Pack;
using dense::store_pack;
using dense::to_float;

// Reads N consecutive weights as floats (p 16-byte aligned when N * sizeof(W) >= 16).
template <typename W, int N>
__device__ __forceinline__ void load_weights(const W* p, float (&f)[N]) {
  if constexpr (N * sizeof(W) % 16 == 0) {
    constexpr int kW = Pack<W>::kN;
#pragma unroll
    for (int c = 0; c < N / kW; ++c) {
      const Pack<W> pk = load_pack(p + c * kW);
#pragma unroll
      for (int i = 0; i < kW; ++i) f[c * kW + i] = to_float(pk.v[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = to_float(p[i]);
  }
}

// kAdd: residual[row] += x[row] first and normalize the (rounded) residual.
template <typename T, typename W, bool kAdd>
__global__ void norm_kernel(const T* x, T* residual, const W* w, T* out, int64_t d, float eps, bool packed) {
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * d;
  const T* xr = x + base;
  T* rr = kAdd ? residual + base : nullptr;
  T* orow = out + base;
  const T* src = kAdd ? rr : xr;  // what gets normalized
  float ss = 0.0f;
  constexpr int kN = Pack<T>::kN;
  if (packed) {
    const int64_t packs = d / kN;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      Pack<T> v = load_pack(xr + p * kN);
      if constexpr (kAdd) {
        Pack<T> r = load_pack(rr + p * kN);
#pragma unroll
        for (int i = 0; i < kN; ++i) r.v[i] = from_float<T>(to_float(v.v[i]) + to_float(r.v[i]));
        store_pack(rr + p * kN, r);
        v = r;
      }
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const float f = to_float(v.v[i]);
        ss += f * f;
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      T v = xr[j];
      if constexpr (kAdd) {
        v = from_float<T>(to_float(v) + to_float(rr[j]));
        rr[j] = v;
      }
      const float f = to_float(v);
      ss += f * f;
    }
  }
  ss = dense::block_sum(ss, scratch);
  const float inv = float(1.0 / sqrt(double(ss) / double(d) + double(eps)));
  if (packed) {
    const int64_t packs = d / kN;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T> v = load_pack(src + p * kN);
      float wf[kN];
      load_weights<W, kN>(w + p * kN, wf);
      Pack<T> o;
#pragma unroll
      for (int i = 0; i < kN; ++i) o.v[i] = from_float<T>(__fmul_rn(__fmul_rn(to_float(v.v[i]), inv), wf[i]));
      store_pack(orow + p * kN, o);
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      orow[j] = from_float<T>(__fmul_rn(__fmul_rn(to_float(src[j]), inv), to_float(w[j])));
  }
}

template <typename T, typename W, bool kAdd>
cudaError_t launch_norm_typed(const T* x, T* residual, const W* w, T* out, int64_t n, int64_t d, float eps,
                              cudaStream_t stream) {
  constexpr int kN = Pack<T>::kN;
  const bool packed = d % kN == 0 && dense::aligned16(x) && dense::aligned16(out) && dense::aligned16(w) &&
                      (!kAdd || dense::aligned16(residual));
  const int64_t items = packed ? d / kN : d;
  int threads = int(((items + 31) / 32) * 32);
  if (threads < 32) threads = 32;
  if (threads > 1024) threads = 1024;
  norm_kernel<T, W, kAdd><<<unsigned(n), unsigned(threads), 0, stream>>>(x, residual, w, out, d, eps, packed);
  return cudaGetLastError();
}

template <bool kAdd>
cudaError_t launch_norm(const void* x, void* residual, const void* weight, DType weight_dtype, void* out, DType dtype,
                        int64_t n, int64_t d, float eps, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  auto with_w = [&](auto* t_tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(t_tag)>;
    const T* xt = static_cast<const T*>(x);
    T* rt = static_cast<T*>(residual);
    T* ot = static_cast<T*>(out);
    if (weight_dtype == DType::F32)
      return launch_norm_typed<T, float, kAdd>(xt, rt, static_cast<const float*>(weight), ot, n, d, eps, stream);
    if (weight_dtype == DType::BF16)
      return launch_norm_typed<T, bf16, kAdd>(xt, rt, static_cast<const bf16*>(weight), ot, n, d, eps, stream);
    return cudaErrorInvalidValue;
  };
  if (dtype == DType::F32) return with_w(static_cast<float*>(nullptr));
  if (dtype == DType::BF16) return with_w(static_cast<bf16*>(nullptr));
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_rms_norm(const void* x, const void* weight, DType weight_dtype, void* out, DType dtype, int64_t n,
                            int64_t d, float eps, cudaStream_t stream) {
  return launch_norm<false>(x, nullptr, weight, weight_dtype, out, dtype, n, d, eps, stream);
}

cudaError_t launch_add_rms_norm(const void* x, void* residual, const void* weight, DType weight_dtype, void* out,
                                DType dtype, int64_t n, int64_t d, float eps, cudaStream_t stream) {
  return launch_norm<true>(x, residual, weight, weight_dtype, out, dtype, n, d, eps, stream);
}

}  // namespace kite::cuda
