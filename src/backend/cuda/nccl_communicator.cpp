// NCCL communicators (compiled only when CMake found NCCL; registered by
// backend/registry.cpp, which calls nccl_factory()). Collectives go to the device's one stream, so they
// order with every other kernel Kite queues there and can be captured into a
// device graph.
#include <nccl.h>

#include <cstring>

#include "backend/communicator.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "core/error.h"

namespace kite::cuda {

namespace {

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    throw Error("nccl", what, fmt::format("{} ({}); check NCCL_DEBUG=WARN output", ncclGetErrorString(r), int(r)));
}

ncclDataType_t nccl_type(const Tensor& x, const char* what) {
  switch (x.dtype()) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
    default: fail(what, "x", "dtype {} is not supported; expected F32, BF16 or I32", dtype_name(x.dtype()));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, Device device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {}
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return device_; }

  void all_reduce_sum(Tensor& x) override {
    check(x, "all_reduce_sum");
    check_nccl(ncclAllReduce(x.data(), x.data(), size_t(x.numel()), nccl_type(x, "all_reduce_sum"), ncclSum, comm_,
                             current_stream(device_.index)),
               "ncclAllReduce");
  }

  void all_gather(const Tensor& x, Tensor& out) override {
    check(x, "all_gather");
    check(out, "all_gather");
    if (out.dtype() != x.dtype() || out.numel() != x.numel() * size_)
      fail("all_gather", "out", "expected {} x {} elements of {}", size_, x.numel(), dtype_name(x.dtype()));
    check_nccl(ncclAllGather(x.data(), out.data(), size_t(x.numel()), nccl_type(x, "all_gather"), comm_,
                             current_stream(device_.index)),
               "ncclAllGather");
  }

  void barrier() override {
    // An all-reduce of one value, then wait for the stream.
    Tensor one = Tensor::zeros({1}, DType::F32, device_);
    all_reduce_sum(one);
    check_cuda(cudaStreamSynchronize(current_stream(device_.index)), "cudaStreamSynchronize (barrier)");
  }

 private:
  void check(const Tensor& x, const char* what) const {
    if (x.device() != device_)
      fail(what, "x", "is on {}, this rank's communicator on {}", x.device().str(), device_.str());
    if (!x.is_contiguous()) fail(what, "x", "must be contiguous");
  }
  ncclComm_t comm_;
  int rank_, size_;
  Device device_;
};

std::vector<std::unique_ptr<Communicator>> make(const std::vector<Device>& devices) {
  const int n = int(devices.size());
  std::vector<int> ids;
  for (const Device& d : devices) {
    if (d.kind != DeviceKind::CUDA) fail("tensor_parallel", "device", "{} is not a CUDA device", d.str());
    ids.push_back(d.index);
  }
  std::vector<ncclComm_t> comms(static_cast<size_t>(n));
  check_nccl(ncclCommInitAll(comms.data(), n, ids.data()), "ncclCommInitAll");
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r)
    out.push_back(std::make_unique<NcclCommunicator>(comms[size_t(r)], r, n, devices[size_t(r)]));
  return out;
}

std::string hex(const ncclUniqueId& id) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < sizeof(id.internal); ++i) {
    const unsigned char c = static_cast<unsigned char>(id.internal[i]);
    s += digits[c >> 4];
    s += digits[c & 15];
  }
  return s;
}

std::string unique_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  return hex(id);
}

std::vector<std::unique_ptr<Communicator>> join(const std::string& text, int world, int first,
                                                const std::vector<Device>& devices) {
  ncclUniqueId id;
  if (text.size() != 2 * sizeof(id.internal))
    fail("tensor_parallel", "nccl_unique_id", "expected {} hex digits, got {}", 2 * sizeof(id.internal), text.size());
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    fail("tensor_parallel", "nccl_unique_id", "'{}' is not a lower-case hex digit", c);
  };
  for (size_t i = 0; i < sizeof(id.internal); ++i)
    id.internal[i] = char(nibble(text[2 * i]) << 4 | nibble(text[2 * i + 1]));
  const int n = int(devices.size());
  if (first < 0 || first + n > world)
    fail("tensor_parallel", "node_rank", "ranks [{}, {}) do not fit a world of {}", first, first + n, world);
  std::vector<ncclComm_t> comms(static_cast<size_t>(n));
  check_nccl(ncclGroupStart(), "ncclGroupStart");
  for (int i = 0; i < n; ++i) {
    set_device(devices[size_t(i)].index);
    check_nccl(ncclCommInitRank(&comms[size_t(i)], world, id, first + i), "ncclCommInitRank");
  }
  check_nccl(ncclGroupEnd(), "ncclGroupEnd");
  std::vector<std::unique_ptr<Communicator>> out;
  for (int i = 0; i < n; ++i)
    out.push_back(std::make_unique<NcclCommunicator>(comms[size_t(i)], first + i, world, devices[size_t(i)]));
  return out;
}

}  // namespace

NcclFactory nccl_factory() { return NcclFactory{make, unique_id, join}; }

}  // namespace kite::cuda
