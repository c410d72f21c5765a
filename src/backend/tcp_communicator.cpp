// CPU ranks in separate processes, joined over TCP through rank 0 (a star:
// fine for the CPU and for tests; GPUs use NCCL).
#include <cstring>

#include "backend/communicator.h"
#include "backend/host_reduce.h"
#include "core/error.h"
#include "core/socket.h"

namespace kite {

namespace {

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(int rank, int size, const std::string& host, int port, double timeout_s) : rank_(rank), size_(size) {
    if (size < 1 || rank < 0 || rank >= size) fail("tcp communicator", "rank", "rank {} of {} is invalid", rank, size);
    if (rank == 0) {
      peers_.resize(size_t(size));
      if (size == 1) return;
      Listener listener(port);
      for (int i = 1; i < size; ++i) {
        Socket s = listener.accept(timeout_s);
        int32_t r = -1;
        s.recv_all(&r, sizeof(r));
        if (r < 1 || r >= size || peers_[size_t(r)].valid())
          fail(s.peer(), "rank", "rank {} is invalid or joined twice (world of {})", r, size);
        peers_[size_t(r)] = std::move(s);
      }
    } else {
      root_ = Socket::connect(host, port, timeout_s);
      const int32_t r = rank;
      root_.send_all(&r, sizeof(r));
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return kCpu; }

  void all_reduce_sum(Tensor& x) override {
    check(x, "all_reduce_sum");
    if (size_ == 1) return;
    const size_t bytes = x.nbytes();
    if (rank_ != 0) {
      root_.send_all(x.data(), bytes);
      root_.recv_all(x.data(), bytes);
      return;
    }
    const int64_t n = x.numel();
    std::vector<float> acc(size_t(n), 0.0f);
    std::vector<char> buf(bytes);
    for (int r = 0; r < size_; ++r) {  // rank order, as the local communicator
      const void* src = x.data();
      if (r > 0) {
        peers_[size_t(r)].recv_all(buf.data(), bytes);
        src = buf.data();
      }
      detail::accumulate(acc, src, x.dtype(), n);
    }
    detail::store(acc, x);
    for (int r = 1; r < size_; ++r) peers_[size_t(r)].send_all(x.data(), bytes);
  }

  void all_gather(const Tensor& x, Tensor& out) override {
    check(x, "all_gather");
    check(out, "all_gather");
    if (out.dtype() != x.dtype() || out.numel() != x.numel() * size_)
      fail("all_gather", "out", "expected {} x {} elements of {}", size_, x.numel(), dtype_name(x.dtype()));
    const size_t bytes = x.nbytes();
    char* o = static_cast<char*>(out.data());
    if (rank_ != 0) {
      root_.send_all(x.data(), bytes);
      root_.recv_all(o, bytes * size_t(size_));
      return;
    }
    std::memcpy(o, x.data(), bytes);
    for (int r = 1; r < size_; ++r) peers_[size_t(r)].recv_all(o + size_t(r) * bytes, bytes);
    for (int r = 1; r < size_; ++r) peers_[size_t(r)].send_all(o, bytes * size_t(size_));
  }

  void barrier() override {
    Tensor one = Tensor::zeros({1}, DType::F32);
    all_reduce_sum(one);
  }
  bool graph_safe() const override { return false; }

 private:
  static void check(const Tensor& x, const char* what) {
    if (!x.device().is_cpu())
      fail(what, "x", "the TCP communicator works on CPU tensors; x is on {}", x.device().str());
    if (!x.is_contiguous()) fail(what, "x", "must be contiguous");
    if (x.dtype() != DType::F32 && x.dtype() != DType::BF16)
      fail(what, "x", "dtype {} is not supported; expected F32 or BF16", dtype_name(x.dtype()));
  }
  int rank_, size_;
  Socket root_;                // ranks > 0: the connection to rank 0
  std::vector<Socket> peers_;  // rank 0: the connection to each other rank
};

}  // namespace

std::unique_ptr<Communicator> make_tcp_communicator(int rank, int size, const std::string& host, int port,
                                                    double timeout_s) {
  return std::make_unique<TcpCommunicator>(rank, size, host, port, timeout_s);
}

}  // namespace kite
