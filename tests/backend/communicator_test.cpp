// The local communicator (CPU ranks as threads) and the vocabulary-shard
// embedding: sums and gathers equal a float64 / direct reference on fresh
// random data, every rank getting the same bits.
#include "backend/communicator.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "backend/ops/embedding.h"
#include "backend_test_util.h"

namespace kite {
namespace {

using test::random_tensor;

// Runs fn(rank) on n threads.
template <typename F>
void on_threads(int n, F fn) {
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r) ts.emplace_back([&, r] { fn(r); });
  for (auto& t : ts) t.join();
}

TEST(Communicator, LocalAllReduceSumsEveryRankF32AndBF16) {
  for (DType dt : {DType::F32, DType::BF16})
    for (int n : {1, 2, 3, 4})
      for (int64_t len : {int64_t(1), int64_t(7), int64_t(4099)}) {
        SCOPED_TRACE(fmt::format("{} ranks, {} x {}", n, len, dtype_name(dt)));
        auto comms = make_local_communicators(n);
        std::vector<Tensor> xs;
        std::vector<std::vector<float>> orig;
        for (int r = 0; r < n; ++r) {
          xs.push_back(random_tensor({len}, dt, uint32_t(100 * n + r + len)));
          orig.push_back(xs.back().to_floats());  // a copy: x is reduced in place
        }
        on_threads(n, [&](int r) {
          EXPECT_EQ(comms[size_t(r)]->rank(), r);
          EXPECT_EQ(comms[size_t(r)]->size(), n);
          comms[size_t(r)]->all_reduce_sum(xs[size_t(r)]);
        });
        for (int64_t i = 0; i < len; ++i) {
          double want = 0;
          for (int r = 0; r < n; ++r) want += double(orig[size_t(r)][size_t(i)]);
          const float got = xs[0].to_floats()[size_t(i)];
          EXPECT_NEAR(got, want, dt == DType::BF16 ? 1e-2 * std::max(1.0, std::fabs(want)) : 1e-5) << i;
        }
        for (int r = 1; r < n; ++r)  // identical bits on every rank
          EXPECT_EQ(std::memcmp(xs[size_t(r)].data(), xs[0].data(), xs[0].nbytes()), 0) << r;
      }
}

TEST(Communicator, LocalAllGatherStacksByRank) {
  const int n = 3;
  auto comms = make_local_communicators(n);
  std::vector<Tensor> xs, outs;
  for (int r = 0; r < n; ++r) {
    xs.push_back(random_tensor({5, 3}, DType::F32, uint32_t(r + 1)));
    outs.push_back(Tensor::empty({n, 5, 3}, DType::F32));
  }
  on_threads(n, [&](int r) { comms[size_t(r)]->all_gather(xs[size_t(r)], outs[size_t(r)]); });
  for (int r = 0; r < n; ++r)
    for (int src = 0; src < n; ++src)
      EXPECT_EQ(std::memcmp(outs[size_t(r)].select(src).data(), xs[size_t(src)].data(), xs[0].nbytes()), 0);
}

TEST(Communicator, LocalRefusesBadArguments) {
  auto comms = make_local_communicators(1);
  Tensor i32 = Tensor::zeros({4}, DType::I32);
  EXPECT_THROW(comms[0]->all_reduce_sum(i32), Error);
  Tensor x = Tensor::zeros({4}, DType::F32), small = Tensor::zeros({3}, DType::F32);
  EXPECT_THROW(comms[0]->all_gather(x, small), Error);
  EXPECT_THROW(make_local_communicators(0), Error);
}

TEST(Communicator, NcclAbsentOrNoGpuSaysSo) {
  if (nccl_available())
    GTEST_SKIP() << "NCCL and a CUDA device are present (tests/model/cuda_tensor_parallel_test.cpp)";
  EXPECT_THROW(make_nccl_communicators({Device{DeviceKind::CUDA, 0}}), Error);
}

TEST(EmbeddingShard, ShardsSumToTheFullLookup) {
  const int64_t vocab = 37, d = 9;
  Tensor table = random_tensor({vocab, d}, DType::BF16, 7);
  std::vector<int32_t> id_values = {0, 36, 5, 18, 19, 12, 0, 30};
  Tensor ids = Tensor::empty({int64_t(id_values.size())}, DType::I32);
  std::memcpy(ids.data(), id_values.data(), id_values.size() * sizeof(int32_t));
  Tensor want = Tensor::empty({ids.dim(0), d}, DType::F32);
  ops::embedding(table, ids, want);
  for (int64_t shards : {1, 2, 3, 4}) {
    const int64_t rows = (vocab + shards - 1) / shards;
    std::vector<float> sum(size_t(ids.dim(0) * d), 0.0f);
    for (int64_t s = 0; s < shards; ++s) {
      const int64_t v0 = std::min(vocab, s * rows), v1 = std::min(vocab, v0 + rows);
      Tensor part = Tensor::zeros({rows, d}, DType::BF16);
      if (v1 > v0) part.slice(0, 0, v1 - v0).copy_from(table.slice(0, v0, v1));
      Tensor out = test::nan_tensor({ids.dim(0), d});
      ops::embedding_shard(part, ids, s * rows, out);
      const float* o = out.data_as<const float>();
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += o[i];  // NaN (unwritten) fails below
    }
    const float* w = want.data_as<const float>();
    for (size_t i = 0; i < sum.size(); ++i) EXPECT_EQ(sum[i], w[i]) << shards << " shards, element " << i;
  }
  Tensor out = Tensor::empty({ids.dim(0), d}, DType::F32);
  EXPECT_THROW(ops::embedding_shard(table, ids, -1, out), Error);
}

}  // namespace
}  // namespace kite
