#pragma once
// One model over several devices (tensor parallelism, Megatron-style: see
// model/decoder.h for how the weights split). The engine sees one
// Model: each call runs on every rank at once, each rank on its own thread
// bound to its device, with the same batch (the scheduler runs once, in the
// engine; the step is "broadcast" by handing every rank thread the same
// BatchInput). Rank 0's logits and ids are returned (every rank computes the
// same ones after the all-gather).
//
// Several nodes: node 0 holds ranks [0, L) and drives the others. Before its
// own ranks run a call, it sends the call (and the step's BatchInput) to
// each other node over TCP; a node runs it on its ranks and answers when
// done (or with the error). The other nodes never see the engine.
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/communicator.h"
#include "core/socket.h"
#include "model/decoder.h"

namespace kite {

class TensorParallelModel : public Model {
 public:
  // Builds this node's ranks: comms[i]->rank() on devices[i], from `src`.
  // remote_nodes: node 0's connections to the other nodes (empty on one
  // node, and on the other nodes themselves). Throws kite::Error when the
  // model cannot be split over that many ranks.
  TensorParallelModel(const LoadedCheckpoint& src, const std::vector<Device>& devices,
                      std::vector<std::unique_ptr<Communicator>> comms, std::vector<Socket> remote_nodes = {});
  ~TensorParallelModel() override;

  Device device() const override { return devices_[0]; }
  DType kv_dtype() const override { return ranks_[0]->kv_dtype(); }
  size_t weight_bytes() const override;
  int tensor_parallel_size() const override { return comms_[0]->size(); }
  PagedKvCache create_kv_cache(int64_t num_blocks, int64_t block_size) override;
  void copy_kv_block(PagedKvCache& cache, int64_t src, int64_t dst) override;
  size_t kv_bytes_per_block(int64_t block_size) const override { return ranks_[0]->kv_bytes_per_block(block_size); }

  Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) override;
  std::vector<int32_t> forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) override;
  bool has_device_argmax() const override { return true; }
  // Rank 0 samples from its (gathered, full) logits; the other ranks run
  // the same forward for its collectives.
  std::vector<ops::SampledToken> forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                      ops::SampleBatch& sample) override;
  void prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) override;
  size_t activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) override;

  DecoderModel& rank(int r) { return *ranks_[size_t(r)]; }
  // Graph replay time of one decode step (rank 0's graph, every rank replaying).
  double graph_step_ms(int64_t batch, int reps);

  // On a node other than 0: serves node 0's calls on this node's ranks until
  // node 0 shuts down or disconnects.
  void serve_node(Socket& node0);

 private:
  enum class Op : uint32_t;
  // Node 0: sends a call to every other node, before the local ranks run it.
  void send_remote(Op op, const Wire& args);
  // Node 0: sends a step (Op::Forward with the batch) to the other nodes.
  void send_step(const BatchInput& batch);
  // Node 0: waits for every other node's answer; rethrows a node's error;
  // returns the largest value answered.
  uint64_t wait_remote();
  // Runs fn(r) on every rank's thread and waits for all; rethrows the first
  // rank's error (by rank order).
  void on_ranks(const std::function<void(int)>& fn);
  // on_ranks, then wait_remote (also when a local rank fails).
  uint64_t on_ranks_then_remote(const std::function<void(int)>& fn);
  void worker(int r);
  void stop_threads();
  static PagedKvCache& shard_of(PagedKvCache& cache, int r);

  std::vector<Device> devices_;
  std::vector<std::unique_ptr<Communicator>> comms_;
  std::vector<std::unique_ptr<DecoderModel>> ranks_;

  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> threads_;
  std::vector<Socket> remotes_;
};

// Where this process sits in a multi-node job (vLLM's flags): nnodes
// processes, one per node, each with tensor_parallel_size / nnodes local
// devices. Node 0 listens on master_port (and master_port + 1 for the CPU
// ranks' collectives); the others connect to master_addr.
struct ClusterSpec {
  int nnodes = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  double timeout_s = 300;
};

// Loads `path` once on the CPU and splits it over `size` ranks: CUDA devices
// first.index .. first.index + size - 1 through NCCL, or `size` CPU threads
// (a local communicator) when first is the CPU. size 1 returns
// load_model_on(path, first).
//
// Several nodes: `size` ranks in all, size / nnodes on each node's devices
// from `first` (NCCL, bootstrapped by node 0's unique id; on the CPU one rank
// per node, joined over TCP). Node 0 gets the model; every other node serves
// node 0's calls and returns nullptr once node 0 is done.
// quantization: see LoadOptions (every rank quantizes the same host weights).
std::unique_ptr<Model> load_model_parallel(const std::string& path, Device first, int size,
                                           const ClusterSpec& cluster = {}, const std::string& quantization = "");

}  // namespace kite
