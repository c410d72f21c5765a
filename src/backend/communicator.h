#pragma once
// Collectives between the ranks of a tensor-parallel model. One rank per
// device; each rank's calls come from its own thread, in the same order on
// every rank (a collective returns once every rank has joined it, or, on
// CUDA, once it is queued on the device's stream: it completes in stream
// order, so it may be recorded into a device graph).
//
// Two implementations:
//  - local: the ranks are threads of this process over host memory (CPU
//    tensors). What the CPU tests and a multi-core laptop run.
//  - NCCL: one CUDA device per rank (registered by the CUDA backend when it
//    was built with NCCL). Single-node ranks share one process, one thread
//    per device; a multi-node job joins through NCCL's own bootstrap, given
//    the unique id rank 0 created (nccl_unique_id / join_nccl).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"

namespace kite {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;
  // x = the sum of every rank's x, in place. x: contiguous, F32 or BF16,
  // the same shape on every rank. BF16 sums in F32 on the local
  // implementation and in NCCL's own order on CUDA.
  virtual void all_reduce_sum(Tensor& x) = 0;
  // out = every rank's x stacked by rank: x [*s] contiguous, out [size, *s]
  // contiguous, same dtype.
  virtual void all_gather(const Tensor& x, Tensor& out) = 0;
  // Blocks until every rank has arrived (and, on CUDA, its queued work is done).
  virtual void barrier() = 0;
  // Whether collectives only queue work on the device's stream (NCCL), so
  // they may be recorded into a device graph. Host-side ones (local, TCP)
  // synchronize and copy: models skip graphs over them.
  virtual bool graph_safe() const { return true; }
};

// n communicators for n ranks run by n threads of this process, over host
// memory: CPU tensors, or device tensors staged through the host (slow: for
// tests of the device path without NCCL, e.g. two ranks on one GPU).
std::vector<std::unique_ptr<Communicator>> make_local_communicators(int n);

// One CPU rank of `size` in separate processes (multi-node on the CPU):
// rank 0 listens on `port`, the others connect to host:port (retrying up to
// timeout_s). Collectives go through rank 0, which sums in rank order and
// sends the result back (identical bits on every rank).
std::unique_ptr<Communicator> make_tcp_communicator(int rank, int size, const std::string& host, int port,
                                                    double timeout_s = 300);

// One communicator per device, all in this process (one thread per device
// must drive each). Throws kite::Error when the CUDA backend or NCCL is absent.
std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<Device>& devices);

// Multi-node: global rank 0 creates an id (ncclGetUniqueId) that every
// process receives out of band; each process then joins with its local
// devices as global ranks first_rank, first_rank + 1, ... of world_size.
std::string nccl_unique_id();
std::vector<std::unique_ptr<Communicator>> join_nccl(const std::string& unique_id, int world_size, int first_rank,
                                                     const std::vector<Device>& devices);

bool nccl_available();

// Binds the calling thread to `device` (cudaSetDevice for CUDA; nothing on
// the CPU). A rank's thread calls it once before its first op.
void bind_thread(Device device);

// ---- for backends ---------------------------------------------------------
struct NcclFactory {
  std::vector<std::unique_ptr<Communicator>> (*make)(const std::vector<Device>& devices) = nullptr;
  std::string (*unique_id)() = nullptr;
  std::vector<std::unique_ptr<Communicator>> (*join)(const std::string& id, int world, int first,
                                                     const std::vector<Device>& devices) = nullptr;
};
void register_nccl_factory(const NcclFactory& factory);

}  // namespace kite
