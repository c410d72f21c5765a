#include "backend/communicator.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "backend/backend.h"
#include "backend/host_reduce.h"
#include "core/error.h"

namespace kite {

namespace {

NcclFactory g_nccl;

// State the local ranks share: a generation-counted barrier and each rank's
// published buffer.
struct LocalGroup {
  explicit LocalGroup(int n) : size(n), slots(size_t(n), nullptr) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<const void*> slots;

  void wait_all() {
    std::unique_lock lock(mu);
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != gen; });
  }
};

void check_collective(const char* what, const Tensor& x) {
  if (!x.is_contiguous()) fail(what, "x", "must be contiguous");
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16)
    fail(what, "x", "dtype {} is not supported; expected F32 or BF16", dtype_name(x.dtype()));
}

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  Device device() const override { return kCpu; }

  void all_reduce_sum(Tensor& x) override {
    check_collective("all_reduce_sum", x);
    if (group_->size == 1) return;
    if (!x.device().is_cpu()) {  // staged through the host (tests; NCCL is the GPU path)
      Tensor host = x.to(kCpu);
      all_reduce_sum(host);
      x.copy_from(host);
      return;
    }
    const int64_t n = x.numel();
    // Every rank sums all ranks' buffers in rank order (so all get the same
    // bits), into a private copy, then writes it back once all have read.
    std::vector<float> acc(size_t(n), 0.0f);
    group_->slots[size_t(rank_)] = x.data();
    group_->wait_all();
    for (int r = 0; r < group_->size; ++r) detail::accumulate(acc, group_->slots[size_t(r)], x.dtype(), n);
    group_->wait_all();  // everyone has read every buffer
    detail::store(acc, x);
  }

  void all_gather(const Tensor& x, Tensor& out) override {
    check_collective("all_gather", x);
    check_collective("all_gather", out);
    if (out.dtype() != x.dtype() || out.numel() != x.numel() * group_->size)
      fail("all_gather", "out", "expected {} x {} elements of {}", group_->size, x.numel(), dtype_name(x.dtype()));
    if (!x.device().is_cpu() || !out.device().is_cpu()) {  // staged through the host
      Tensor host_out = Tensor::empty(out.shape(), out.dtype());
      all_gather(x.to(kCpu), host_out);
      out.copy_from(host_out);
      return;
    }
    group_->slots[size_t(rank_)] = x.data();
    group_->wait_all();
    const size_t bytes = x.nbytes();
    for (int r = 0; r < group_->size; ++r)
      std::memcpy(static_cast<char*>(out.data()) + size_t(r) * bytes, group_->slots[size_t(r)], bytes);
    group_->wait_all();
  }

  void barrier() override { group_->wait_all(); }
  bool graph_safe() const override { return false; }

 private:
  std::shared_ptr<LocalGroup> group_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_local_communicators(int n) {
  if (n < 1) fail("tensor_parallel_size", "size", "{} is invalid; expected at least 1", n);
  auto group = std::make_shared<LocalGroup>(n);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r) out.push_back(std::make_unique<LocalCommunicator>(group, r));
  return out;
}

void register_nccl_factory(const NcclFactory& factory) { g_nccl = factory; }

bool nccl_available() {
  init_backends();
  return g_nccl.make != nullptr && cuda_available();
}

namespace {
void require_nccl() {
  if (!nccl_available())
    throw Error("tensor_parallel", "nccl",
                "this build has no NCCL (or no CUDA device is present): rebuild with the CUDA toolkit's NCCL, or run "
                "tensor parallelism on the CPU (--device cpu)");
}
}  // namespace

std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<Device>& devices) {
  require_nccl();
  return g_nccl.make(devices);
}

std::string nccl_unique_id() {
  require_nccl();
  return g_nccl.unique_id();
}

std::vector<std::unique_ptr<Communicator>> join_nccl(const std::string& unique_id, int world_size, int first_rank,
                                                     const std::vector<Device>& devices) {
  require_nccl();
  return g_nccl.join(unique_id, world_size, first_rank, devices);
}

}  // namespace kite
