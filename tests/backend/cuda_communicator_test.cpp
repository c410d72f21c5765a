// NCCL communicators on two CUDA devices (one thread per device): sums and
// gathers equal the host reference. Skipped without NCCL or a second GPU.
#include <gtest/gtest.h>

#include <thread>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "backend/ops/embedding.h"
#include "backend_test_util.h"

namespace kite {
namespace {

std::vector<Device> two_gpus() {
  if (!nccl_available()) return {};
  try {
    device_total_memory(Device{DeviceKind::CUDA, 1});
  } catch (const Error&) {
    return {};
  }
  return {Device{DeviceKind::CUDA, 0}, Device{DeviceKind::CUDA, 1}};
}

TEST(CudaCommunicator, NcclAllReduceAndAllGatherOnTwoGpus) {
  const std::vector<Device> devs = two_gpus();
  if (devs.empty()) GTEST_SKIP() << "needs NCCL and two CUDA devices";
  auto comms = make_nccl_communicators(devs);
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t len : {int64_t(1), int64_t(4099), int64_t(1) << 20}) {
      SCOPED_TRACE(fmt::format("{} x {}", len, dtype_name(dt)));
      std::vector<Tensor> host, dev, gathered(2);
      for (int r = 0; r < 2; ++r) {
        host.push_back(test::random_tensor({len}, dt, uint32_t(7 * r + len)));
        dev.push_back(host.back().to(devs[size_t(r)]));
        gathered[size_t(r)] = Tensor::empty({2, len}, dt, devs[size_t(r)]);
      }
      std::vector<Tensor> sent = {dev[0].to(devs[0]), dev[1].to(devs[1])};  // copies for the gather
      std::vector<std::thread> ts;
      for (int r = 0; r < 2; ++r)
        ts.emplace_back([&, r] {
          bind_thread(devs[size_t(r)]);
          comms[size_t(r)]->all_gather(sent[size_t(r)], gathered[size_t(r)]);
          comms[size_t(r)]->all_reduce_sum(dev[size_t(r)]);
          synchronize(devs[size_t(r)]);
        });
      for (auto& t : ts) t.join();
      const std::vector<float> a = host[0].to_floats(), b = host[1].to_floats();
      for (int r = 0; r < 2; ++r) {
        const std::vector<float> sum = dev[size_t(r)].to_floats(), g = gathered[size_t(r)].to_floats();
        for (int64_t i = 0; i < len; i += std::max<int64_t>(1, len / 4096)) {
          const double want = double(a[size_t(i)]) + double(b[size_t(i)]);
          ASSERT_NEAR(sum[size_t(i)], want, dt == DType::BF16 ? 1e-2 * std::max(1.0, std::fabs(want)) : 1e-6) << i;
          ASSERT_EQ(g[size_t(i)], a[size_t(i)]) << i;
          ASSERT_EQ(g[size_t(len + i)], b[size_t(i)]) << i;
        }
      }
    }
  }
}

TEST(CudaCommunicator, EmbeddingShardMatchesTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const Device gpu{DeviceKind::CUDA, 0};
  const int64_t rows = 50, d = 72;
  Tensor table = test::random_tensor({rows, d}, DType::BF16, 3);
  std::vector<int32_t> v = {0, 49, 50, 99, 120, 75, 3};
  Tensor ids = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::memcpy(ids.data(), v.data(), v.size() * sizeof(int32_t));
  Tensor want = Tensor::empty({ids.dim(0), d}, DType::F32);
  ops::embedding_shard(table, ids, 50, want);
  for (DType out_dt : {DType::F32, DType::BF16}) {
    Tensor out = Tensor::empty({ids.dim(0), d}, out_dt, gpu);
    ops::embedding_shard(table.to(gpu), ids.to(gpu), 50, out);
    const std::vector<float> g = out.to_floats(), w = want.to_floats();
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(g[i], w[i]) << i;
  }
}

}  // namespace
}  // namespace kite
