#pragma once
// CUDA-internal declarations shared by the backend's .cu and .cpp files. The
// .cu files include no fmt (its headers do not build under nvcc's C++20
// mode): launchers report CUDA errors by returning them, and the host side
// (cuda_check.h) turns them into kite::Error.
//
// Streams. Each device has one non-blocking stream, created when the backend
// registers; current_stream(device) returns it. Every kernel, cuBLASLt call,
// memset and copy Kite queues on a device goes to that stream, never to the
// legacy default stream (which a non-blocking stream does not wait for), so
// work is ordered and the memory pool may reuse a freed block at once.
// Host<->device copies go through it too: device->host and pageable
// host->device copies synchronize it before returning (the host needs or may
// reuse its buffer); a pinned host->device copy does not, so its buffer must
// stay unchanged until synchronize(device).
//
// CUDA graphs can be captured on current_stream(device) (cudaStreamBeginCapture)
// as long as the captured code keeps these rules:
//  - launches go to current_stream(device) only, checked with
//    cudaGetLastError (no cudaDeviceSynchronize / cudaStreamSynchronize /
//    synchronous cudaMemcpy in a launch path);
//  - no host<->device copies (they synchronize) and no ops whose dispatcher
//    reads device data on the host (ops::embedding validates its ids on the host);
//  - no allocation: the memory pool throws kite::Error when asked for memory
//    while the stream captures. Allocate every tensor the graph uses, and warm
//    up every linear shape once (cuBLASLt handle, workspace, algorithm choice)
//    before capture, and keep those tensors alive while the graph can replay.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"

namespace kite::cuda {

// The stream every kernel on `device` runs on (see above). Valid after the
// backend registered; throws kite::Error for a device index it does not know.
cudaStream_t current_stream(int device);

// ---- elementwise (elementwise.cu, add.cu) ----------------------------------
// Every pointer argument is device memory; F32 or BF16 as `dtype` says.
// 16-byte vector loads when all pointers are 16-byte aligned.

// out = a + b over n elements (any of them may alias). dtype: F32 or BF16
// (BF16: the F32 sum rounded to nearest even).
cudaError_t launch_add(const void* a, const void* b, void* out, DType dtype, int64_t n, cudaStream_t stream);
// out = silu(gate) * up = gate / (1 + exp(-gate)) * up in F32, over n elements
// (out may alias gate or up). dtype: F32 or BF16.
cudaError_t launch_silu_mul(const void* gate, const void* up, void* out, DType dtype, int64_t n, cudaStream_t stream);
// out[i, j] = silu(gate_up[i, j]) * gate_up[i, f + j]: gate_up [n, 2f], out
// [n, f] (no aliasing), the same math as launch_silu_mul. dtype: F32 or BF16.
cudaError_t launch_silu_mul_fused(const void* gate_up, void* out, DType dtype, int64_t n, int64_t f,
                                  cudaStream_t stream);
// y[i, j] += bias[j] in F32, rounded once to y's dtype.
// y: [n, m] F32|BF16; bias: [m] F32|BF16.
cudaError_t launch_add_bias(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t n, int64_t m,
                            cudaStream_t stream);

// ---- linear fallback (linear_fallback.cu) -----------------------------------
// y = x @ w^T (+ bias) with one warp per output, for shapes cuBLASLt refuses.
// x: [n, k] BF16; w: [m, k] BF16; bias: [m] F32|BF16 or null; y: [n, m] F32|BF16.
cudaError_t launch_linear_fallback(const void* x, const void* w, const void* bias, DType bias_dtype, void* y,
                                   DType y_dtype, int64_t n, int64_t m, int64_t k, cudaStream_t stream);

// ---- embedding (embedding.cu) -------------------------------------------
// out[i, :] = table[ids[i] - first_id, :] converted to out_dtype; a row
// whose id - first_id is outside [0, vocab) is written as zeros (a
// vocabulary shard's lookup; ops::embedding checks ids beforehand).
// table: [vocab, d] F32|BF16; ids: [n] I32; out: [n, d] F32|BF16.
cudaError_t launch_embedding(const void* table, DType table_dtype, const int32_t* ids, int64_t first_id, int64_t vocab,
                             void* out, DType out_dtype, int64_t n, int64_t d, cudaStream_t stream);

// ---- norms (rms_norm.cu): one CTA per row, F32 math ----------------------
// out[i, :] = x[i, :] * inv_i * weight with inv_i = 1 / sqrt(mean(x[i, :]^2) + eps)
// (the CPU kernel's formula: sum of squares in F32, mean and inverse root in
// F64, then (x * inv) * w in F32). x, out: [n, d] of `dtype` (F32|BF16; out may
// alias x); weight: [d] F32|BF16.
cudaError_t launch_rms_norm(const void* x, const void* weight, DType weight_dtype, void* out, DType dtype, int64_t n,
                            int64_t d, float eps, cudaStream_t stream);
// residual += x (rounded to `dtype`), then out = rms_norm(residual) of the
// rounded values. x, residual, out: [n, d] of `dtype`; out may alias x, not residual.
cudaError_t launch_add_rms_norm(const void* x, void* residual, const void* weight, DType weight_dtype, void* out,
                                DType dtype, int64_t n, int64_t d, float eps, cudaStream_t stream);

// ---- rope (rope.cu) -------------------------------------------------------
// ops::rope in place: angle float(pos) * inv_freq[j] in F32, cos/sin in F64
// rounded to F32 and scaled by `factor`, rotation in F32 without FMA
// contraction (bitwise the CPU's arithmetic for F32 x).
// x: [n, heads, head_dim] F32|BF16; positions: [n] I32; inv_freq: token i's
// r F32 frequencies at inv_freq + i * freq_stride (0: one [r] table for all,
// r: an [n, r] table), 2r <= head_dim.
cudaError_t launch_rope(void* x, DType dtype, const int32_t* positions, const float* inv_freq, int64_t freq_stride,
                        int64_t n, int64_t heads, int64_t head_dim, int64_t r, float factor, cudaStream_t stream);

}  // namespace kite::cuda
