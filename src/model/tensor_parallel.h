#pragma once
// One model over several devices (tensor parallelism, Megatron-style: see
// model/device_decoder.h for how the weights split). The engine sees one
// Model: each call runs on every rank at once, each rank on its own thread
// bound to its device, with the same batch (the scheduler runs once, in the
// engine; the step is "broadcast" by handing every rank thread the same
// BatchInput). Rank 0's logits and ids are returned (every rank computes the
// same ones after the all-gather).
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/communicator.h"
#include "model/device_decoder.h"

namespace kite {

class TensorParallelModel : public Model {
 public:
  // Builds rank r on devices[r] from `src`, joined by comms[r] (one per
  // device, in rank order). Throws kite::Error when the model cannot be
  // split over that many ranks.
  TensorParallelModel(const DecoderModel& src, const std::vector<Device>& devices,
                      std::vector<std::unique_ptr<Communicator>> comms);
  ~TensorParallelModel() override;

  Device device() const override { return devices_[0]; }
  DType kv_dtype() const override { return ranks_[0]->kv_dtype(); }
  size_t weight_bytes() const override;
  int tensor_parallel_size() const override { return int(devices_.size()); }
  PagedKvCache create_kv_cache(int64_t num_blocks, int64_t block_size) override;
  size_t kv_bytes_per_block(int64_t block_size) const override { return ranks_[0]->kv_bytes_per_block(block_size); }

  Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) override;
  Tensor forward_batch(const BatchInput& batch, PagedKvCache& cache) override;
  std::vector<int32_t> forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) override;
  bool has_device_argmax() const override { return true; }
  // Rank 0 samples from its (gathered, full) logits; the other ranks run
  // the same forward for its collectives.
  std::vector<ops::SampledToken> forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                      ops::SampleBatch& sample) override;
  void prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len, bool enforce_eager) override;
  size_t activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) override;

  DeviceDecoderModel& rank(int r) { return *ranks_[size_t(r)]; }
  // Graph replay time of one decode step (rank 0's graph, every rank replaying).
  double graph_step_ms(int64_t batch, int reps);

 private:
  // Runs fn(r) on every rank's thread and waits for all; rethrows the first
  // rank's error (by rank order).
  void on_ranks(const std::function<void(int)>& fn);
  void worker(int r);
  void stop_threads();
  static PagedKvCache& shard_of(PagedKvCache& cache, int r);

  std::vector<Device> devices_;
  std::vector<std::unique_ptr<Communicator>> comms_;
  std::vector<std::unique_ptr<DeviceDecoderModel>> ranks_;

  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> threads_;
};

// Loads `path` once on the CPU and splits it over `size` ranks: CUDA devices
// first.index .. first.index + size - 1 through NCCL, or `size` CPU threads
// (a local communicator) when first is the CPU. size 1 returns
// load_model_on(path, first).
std::unique_ptr<Model> load_model_parallel(const std::string& path, Device first, int size);

}  // namespace kite
