// CUDA backend tests: run on the GPU machine (scripts/device/run.sh); on a
// machine without a CUDA device they are skipped, not passed.
#include <gtest/gtest.h>

#include <random>

#include "backend/backend.h"
#include "backend/ops/ops.h"
#include "core/error.h"

namespace kite {
namespace {

TEST(CudaDevice, RoundTripCopiesAreExact) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device in this build/machine";
  std::mt19937 rng(5);
  std::normal_distribution<float> n;
  for (int64_t size : {1, 7, 4096, 1 << 20}) {
    std::vector<float> v(static_cast<size_t>(size));
    for (auto& x : v) x = n(rng);
    Tensor host = Tensor::from_floats({size}, v);
    Tensor dev = host.to(Device{DeviceKind::CUDA, 0});
    EXPECT_EQ(dev.device().kind, DeviceKind::CUDA);
    Tensor dev2 = dev.to(Device{DeviceKind::CUDA, 0});  // device to device
    EXPECT_EQ(dev2.to_floats(), v);
  }
  Tensor z = Tensor::zeros({1000}, DType::BF16, Device{DeviceKind::CUDA, 0});
  for (float x : z.to_floats()) ASSERT_EQ(x, 0.0f);
  synchronize(Device{DeviceKind::CUDA, 0});
  EXPECT_NE(device_description(Device{DeviceKind::CUDA, 0}).find("cuda:0"), std::string::npos);
}

TEST(CudaDevice, OpsWithoutCudaKernelsSayCleanly) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device in this build/machine";
  Device gpu{DeviceKind::CUDA, 0};
  Tensor a = Tensor::zeros({4, 8}, DType::F32, gpu);
  Tensor out = Tensor::zeros({4, 8}, DType::F32, gpu);
  // Until the CUDA kernels land (issue 7), every op must refuse with a
  // kite::Error naming the op, never crash or run on the wrong memory.
  EXPECT_THROW(ops::add(a, a, out), Error);
}

TEST(CudaDevice, AbsentBackendIsAnErrorNotACrash) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device{DeviceKind::CUDA, 0}), Error);
}

}  // namespace
}  // namespace kite
