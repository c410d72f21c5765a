// Host wrappers of the dense CUDA kernels: tensors in, launches on the
// device's stream, CUDA errors out as kite::Error.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_ops.h"

namespace kite::cuda {

namespace {
// Makes the tensor's device current and returns its stream.
cudaStream_t stream_for(const Tensor& t) {
  set_device(t.device().index);
  return current_stream(t.device().index);
}
}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  cudaStream_t s = stream_for(table);
  check_cuda(launch_embedding(table.data(), table.dtype(), ids.data_as<const int32_t>(), 0, table.dim(0), out.data(),
                              out.dtype(), out.dim(0), out.dim(1), s),
             "embedding kernel");
}

void embedding_shard(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out) {
  cudaStream_t s = stream_for(table);
  check_cuda(launch_embedding(table.data(), table.dtype(), ids.data_as<const int32_t>(), first_id, table.dim(0),
                              out.data(), out.dtype(), out.dim(0), out.dim(1), s),
             "embedding kernel");
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  cudaStream_t s = stream_for(x);
  check_cuda(
      launch_rms_norm(x.data(), weight.data(), weight.dtype(), out.data(), x.dtype(), x.dim(0), x.dim(1), eps, s),
      "rms_norm kernel");
}

void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out) {
  cudaStream_t s = stream_for(x);
  check_cuda(launch_add_rms_norm(x.data(), residual.data(), weight.data(), weight.dtype(), out.data(), x.dtype(),
                                 x.dim(0), x.dim(1), eps, s),
             "add_rms_norm kernel");
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor) {
  cudaStream_t s = stream_for(x);
  const int64_t r = inv_freq.dim(inv_freq.ndim() - 1);  // inv_freq: [r] or [n, r]
  check_cuda(launch_rope(x.data(), x.dtype(), positions.data_as<const int32_t>(), inv_freq.data_as<const float>(),
                         inv_freq.ndim() == 2 ? r : 0, x.dim(0), x.dim(1), x.dim(2), r, attention_factor, s),
             "rope kernel");
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  cudaStream_t s = stream_for(gate);
  check_cuda(launch_silu_mul(gate.data(), up.data(), out.data(), gate.dtype(), gate.numel(), s), "silu_mul kernel");
}

void silu_mul_fused(const Tensor& gate_up, Tensor& out) {
  cudaStream_t s = stream_for(gate_up);
  check_cuda(launch_silu_mul_fused(gate_up.data(), out.data(), gate_up.dtype(), out.dim(0), out.dim(1), s),
             "silu_mul_fused kernel");
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  cudaStream_t s = stream_for(a);
  check_cuda(launch_add(a.data(), b.data(), out.data(), a.dtype(), a.numel(), s), "add kernel");
}

void register_dense_kernels(Kernels& table) {
  table.embedding = embedding;
  table.embedding_shard = embedding_shard;
  table.rms_norm = rms_norm;
  table.add_rms_norm = add_rms_norm;
  table.linear = linear;
  table.rope = rope;
  table.silu_mul = silu_mul;
  table.silu_mul_fused = silu_mul_fused;
  table.add = add;
}

}  // namespace kite::cuda
