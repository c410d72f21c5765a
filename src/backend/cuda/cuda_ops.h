#pragma once
// The CUDA kernel-table entries (host side, plain C++). Arguments were
// validated by the dispatchers in backend/ops/ (dtypes, shapes, contiguity,
// one device); each entry makes the tensors' device current and queues its
// work on current_stream(device).
#include "backend/kernels.h"
#include "core/tensor.h"

namespace kite::cuda {

void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out);
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor);
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);
void silu_mul_fused(const Tensor& gate_up, Tensor& out);
void add(const Tensor& a, const Tensor& b, Tensor& out);
// cuBLASLt (linear.cpp): x [n, k] BF16, w [m, k] BF16, bias [m] BF16|F32 or
// null, y [n, m] BF16|F32; F32 accumulation.
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);

// Fills the dense entries above into `table`.
void register_dense_kernels(Kernels& table);

}  // namespace kite::cuda
