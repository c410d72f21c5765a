#include "core/tensor.h"

#include <gtest/gtest.h>

#include <atomic>

#include "core/error.h"
#include "core/parallel.h"

namespace kite {
namespace {

TEST(Tensor, EmptyShapeStridesAlignment) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::F32);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  EXPECT_EQ(t.dim(-1), 4);
}

TEST(Tensor, SliceSelectReshapeShareStorage) {
  std::vector<float> v(12);
  for (int i = 0; i < 12; ++i) v[size_t(i)] = float(i);
  Tensor t = Tensor::from_floats({3, 4}, v);
  Tensor rows = t.slice(0, 1, 3);  // [2, 4]
  EXPECT_EQ(rows.shape(), (Shape{2, 4}));
  EXPECT_EQ(rows.data_as<float>()[0], 4.0f);
  Tensor col = t.slice(1, 1, 2);  // [3, 1], strided
  EXPECT_FALSE(col.is_contiguous());
  EXPECT_EQ(col.to_floats(), (std::vector<float>{1, 5, 9}));
  Tensor r = t.select(2);
  EXPECT_EQ(r.to_floats(), (std::vector<float>{8, 9, 10, 11}));
  Tensor re = t.reshape({2, -1});
  EXPECT_EQ(re.shape(), (Shape{2, 6}));
  re.data_as<float>()[0] = 42;
  EXPECT_EQ(t.data_as<float>()[0], 42.0f);
  EXPECT_THROW(t.reshape({5, -1}), std::logic_error);
}

TEST(Tensor, DtypeConversionAndCopy) {
  Tensor t = Tensor::from_floats({2, 2}, {1.0f, -2.5f, 3.25f, 1e-3f});
  Tensor b = t.to_dtype(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  auto back = b.to_floats();
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_NEAR(back[3], 1e-3f, 1e-5f);
  Tensor c = Tensor::zeros({2, 2}, DType::F32);
  c.copy_from(t);
  EXPECT_EQ(c.to_floats(), t.to_floats());
}

TEST(Tensor, ColumnBlocksCopyAsRowStrided2D) {
  std::vector<float> v(6 * 10);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i);
  Tensor m = Tensor::from_floats({6, 10}, v);  // [6, 10]
  Tensor block = Tensor::empty({6, 3}, DType::F32);
  block.copy_from(m.slice(1, 4, 7));  // columns 4..6 of every row
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(block.to_floats()[size_t(r * 3 + c)], float(r * 10 + 4 + c));
  // And back into a column block of another matrix.
  Tensor z = Tensor::zeros({6, 10}, DType::F32);
  Tensor dst = z.slice(1, 1, 4);
  dst.copy_from(block);
  auto zf = z.to_floats();
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t c = 0; c < 10; ++c)
      EXPECT_EQ(zf[size_t(r * 10 + c)], (c >= 1 && c < 4) ? float(r * 10 + 3 + c) : 0.0f) << r << "," << c;
}

TEST(Tensor, WrapKeepsOwnerAlive) {
  auto buf = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3});
  std::weak_ptr<std::vector<float>> weak = buf;
  Tensor t = Tensor::wrap(buf->data(), {3}, DType::F32, kCpu, buf);
  buf.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(t.to_floats()[2], 3.0f);
  t = Tensor();
  EXPECT_TRUE(weak.expired());
}

TEST(Parallel, CoversRangeExactlyOnce) {
  std::vector<int> hits(1003, 0);
  parallel_for(1003, 10, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
  });
  for (int h : hits) EXPECT_EQ(h, 1);
  int calls = 0;
  parallel_for(5, 100, [&](int64_t b, int64_t e) {
    ++calls;
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 5);
  });
  EXPECT_EQ(calls, 1);
}

TEST(Parallel, ManyJobsNestedCallsAndThreadCounts) {
  const int saved = num_threads();
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    for (int job = 0; job < 2000; ++job) {
      const int64_t n = 1 + job % 97;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      parallel_for(n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          // A nested call (inline inside a pool job) still covers its range once.
          std::atomic<int64_t> covered{0};
          parallel_for(3, 1, [&](int64_t nb, int64_t ne) { covered += ne - nb; });
          EXPECT_EQ(covered.load(), 3);
          hits[size_t(i)].fetch_add(1);
        }
      });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1) << "threads " << threads << " job " << job;
    }
  }
  set_num_threads(saved);
}

TEST(Errors, MessageNamesSourceAndField) {
  try {
    fail("model.safetensors", "header", "length {} past end", 99);
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "model.safetensors: header: length 99 past end");
    EXPECT_EQ(e.field(), "header");
  }
}

}  // namespace
}  // namespace kite
