// Host side of the CUDA sampling kernels: argument unpacking and registration.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/sampling_kernels.h"
#include "backend/kernels.h"

namespace kite::cuda {

namespace {

void argmax(const Tensor& x, Tensor& out) {
  const int dev = x.device().index;
  set_device(dev);
  check_cuda(
      launch_argmax_rows(x.data_as<const float>(), out.data_as<int32_t>(), x.dim(0), x.dim(1), current_stream(dev)),
      "argmax");
}

}  // namespace

void register_sampling_kernels(Kernels& table) { table.argmax = argmax; }

}  // namespace kite::cuda
