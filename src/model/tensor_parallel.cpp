#include "model/tensor_parallel.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"

namespace kite {

TensorParallelModel::TensorParallelModel(const DecoderModel& src, const std::vector<Device>& devices,
                                         std::vector<std::unique_ptr<Communicator>> comms)
    : devices_(devices), comms_(std::move(comms)) {
  config_ = src.config();
  path_ = src.path();
  const int n = int(devices_.size());
  if (n < 1 || int(comms_.size()) != n)
    fail(path_, "tensor_parallel_size", "{} devices for {} communicators", n, comms_.size());
  ranks_.resize(size_t(n));
  errors_.resize(size_t(n));
  for (int r = 0; r < n; ++r) threads_.emplace_back([this, r] { worker(r); });
  // Each rank copies its shard from its own thread (bound to its device).
  try {
    on_ranks([&](int r) {
      ranks_[size_t(r)] = std::make_unique<DeviceDecoderModel>(src, devices_[size_t(r)],
                                                               TensorParallelRank{r, n, comms_[size_t(r)].get()});
    });
  } catch (...) {
    stop_threads();  // the destructor does not run for a constructor that throws
    throw;
  }
}

TensorParallelModel::~TensorParallelModel() {
  stop_threads();
  // Ranks go before their communicators (declaration order frees comms_ last).
  ranks_.clear();
}

void TensorParallelModel::stop_threads() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_)
    if (t.joinable()) t.join();
}

void TensorParallelModel::worker(int r) {
  bool bound = false;
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job = nullptr;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr err;
    try {
      if (!bound) {
        bind_thread(devices_[size_t(r)]);
        bound = true;
      }
      (*job)(r);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard lock(mu_);
      errors_[size_t(r)] = err;
      if (--pending_ == 0) cv_.notify_all();
    }
  }
}

void TensorParallelModel::on_ranks(const std::function<void(int)>& fn) {
  std::unique_lock lock(mu_);
  job_ = &fn;
  pending_ = int(threads_.size());
  for (auto& e : errors_) e = nullptr;
  ++generation_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  for (auto& e : errors_)
    if (e) std::rethrow_exception(e);
}

PagedKvCache& TensorParallelModel::shard_of(PagedKvCache& cache, int r) {
  KITE_CHECK(cache.num_shards() > r, "the KV cache has {} shards; rank {} needs its own (create_kv_cache)",
             cache.num_shards(), r);
  return cache.shard(r);
}

size_t TensorParallelModel::weight_bytes() const {
  size_t total = 0;
  for (const auto& r : ranks_) total += r->weight_bytes();
  return total;
}

PagedKvCache TensorParallelModel::create_kv_cache(int64_t num_blocks, int64_t block_size) {
  std::vector<PagedKvCache> shards;
  for (auto& r : ranks_) shards.push_back(r->create_kv_cache(num_blocks, block_size));
  return PagedKvCache(std::move(shards));
}

Tensor TensorParallelModel::forward(std::span<const int32_t>, KvCache&, bool) {
  throw Error(path_, "tensor_parallel_size",
              "a tensor-parallel model runs through the engine (kite generate, serve, bench); kite ppl runs on one "
              "device");
}

Tensor TensorParallelModel::forward_batch(const BatchInput& batch, PagedKvCache& cache) {
  std::vector<Tensor> out(ranks_.size());
  on_ranks([&](int r) {
    Tensor t = ranks_[size_t(r)]->forward_batch(batch, shard_of(cache, r));
    if (r == 0) out[0] = std::move(t);
  });
  return out[0];
}

std::vector<int32_t> TensorParallelModel::forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) {
  std::vector<int32_t> ids;
  on_ranks([&](int r) {
    std::vector<int32_t> v = ranks_[size_t(r)]->forward_batch_argmax(batch, shard_of(cache, r));
    if (r == 0) ids = std::move(v);
  });
  return ids;
}

std::vector<ops::SampledToken> TensorParallelModel::forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                                         ops::SampleBatch& sample) {
  std::vector<ops::SampledToken> out;
  on_ranks([&](int r) {
    if (r == 0)
      out = ranks_[0]->forward_batch_sample(batch, shard_of(cache, 0), sample);
    else
      ranks_[size_t(r)]->forward_batch_argmax(batch, shard_of(cache, r));
  });
  return out;
}

void TensorParallelModel::prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len,
                                  bool enforce_eager) {
  on_ranks([&](int r) { ranks_[size_t(r)]->prepare(shard_of(cache, r), max_num_seqs, max_model_len, enforce_eager); });
}

size_t TensorParallelModel::activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) {
  std::vector<size_t> bytes(ranks_.size());
  on_ranks([&](int r) { bytes[size_t(r)] = ranks_[size_t(r)]->activation_bytes(max_batched_tokens, max_num_seqs); });
  return *std::max_element(bytes.begin(), bytes.end());
}

double TensorParallelModel::graph_step_ms(int64_t batch, int reps) {
  std::vector<double> ms(ranks_.size());
  on_ranks([&](int r) { ms[size_t(r)] = ranks_[size_t(r)]->graph_step_ms(batch, reps); });
  return ms[0];
}

std::unique_ptr<Model> load_model_parallel(const std::string& path, Device first, int size) {
  if (size < 1) fail("kite", "tensor_parallel_size", "{} is invalid; expected 1 or more", size);
  if (size == 1) return load_model_on(path, first);
  std::unique_ptr<Model> cpu = load_model(path);
  auto* dec = dynamic_cast<DecoderModel*>(cpu.get());
  if (!dec) fail(path, "model", "this model kind does not run tensor-parallel");
  std::vector<Device> devices;
  std::vector<std::unique_ptr<Communicator>> comms;
  if (first.is_cpu()) {
    devices.assign(size_t(size), kCpu);
    comms = make_local_communicators(size);
  } else {
    for (int i = 0; i < size; ++i) {
      devices.push_back(Device{first.kind, first.index + i});
      device_total_memory(devices.back());  // throws, naming the device, when it is absent
    }
    comms = make_nccl_communicators(devices);
  }
  return std::make_unique<TensorParallelModel>(*dec, devices, std::move(comms));
}

}  // namespace kite
