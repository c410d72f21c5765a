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

TEST(CudaDevice, AddMatchesTheCpuExactly) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device in this build/machine";
  Device gpu{DeviceKind::CUDA, 0};
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int64_t n : {1, 3, 4, 1001, 1 << 18}) {
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    for (auto& x : a) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    Tensor ha = Tensor::from_floats({n}, a), hb = Tensor::from_floats({n}, b);
    Tensor out = Tensor::empty({n}, DType::F32, gpu);
    ops::add(ha.to(gpu), hb.to(gpu), out);
    auto got = out.to_floats();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], a[i] + b[i]) << i;
    if (n > 1) {  // unaligned views take the scalar kernel
      Tensor ga = ha.to(gpu).slice(0, 1, n), gb = hb.to(gpu).slice(0, 1, n);
      Tensor o2 = Tensor::empty({n - 1}, DType::F32, gpu);
      ops::add(ga, gb, o2);
      auto g2 = o2.to_floats();
      for (size_t i = 0; i < g2.size(); ++i) ASSERT_EQ(g2[i], a[i + 1] + b[i + 1]) << i;
    }
  }
}

TEST(CudaDevice, OpsWithoutCudaKernelsSayCleanly) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device in this build/machine";
  Device gpu{DeviceKind::CUDA, 0};
  Tensor x = Tensor::zeros({4, 8}, DType::F32, gpu);
  Tensor w = Tensor::zeros({2, 8}, DType::F32, gpu);
  Tensor y = Tensor::zeros({4, 2}, DType::F32, gpu);
  // Until the CUDA GEMMs land (issue 7), linear must refuse with a
  // kite::Error naming the op, never crash or touch the wrong memory.
  try {
    ops::linear(x, w, nullptr, y);
    FAIL() << "linear ran on cuda";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
}

TEST(CudaDevice, AbsentBackendIsAnErrorNotACrash) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device{DeviceKind::CUDA, 0}), Error);
}

}  // namespace
}  // namespace kite
