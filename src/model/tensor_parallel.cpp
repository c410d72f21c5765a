#include "model/tensor_parallel.h"

#include <algorithm>
#include <optional>

#include "backend/backend.h"
#include "core/error.h"
#include "model/batch_wire.h"

namespace kite {

// The calls node 0 sends to the other nodes.
enum class TensorParallelModel::Op : uint32_t {
  CreateCache = 1,
  CopyBlock,
  Prepare,
  ActivationBytes,
  Forward,
  GraphStep,
  Shutdown
};

namespace {}  // namespace

TensorParallelModel::TensorParallelModel(const LoadedCheckpoint& src, const std::vector<Device>& devices,
                                         std::vector<std::unique_ptr<Communicator>> comms,
                                         std::vector<Socket> remote_nodes)
    : devices_(devices), comms_(std::move(comms)), remotes_(std::move(remote_nodes)) {
  config_ = src.config;
  path_ = src.path;
  const int n = int(devices_.size());
  if (n < 1 || int(comms_.size()) != n)
    fail(path_, "tensor_parallel_size", "{} devices for {} communicators", n, comms_.size());
  ranks_.resize(size_t(n));
  errors_.resize(size_t(n));
  for (int r = 0; r < n; ++r) threads_.emplace_back([this, r] { worker(r); });
  // Each rank copies its shard from its own thread (bound to its device).
  try {
    on_ranks([&](int r) {
      Communicator& c = *comms_[size_t(r)];
      ranks_[size_t(r)] = std::make_unique<DecoderModel>(src.config, src.path, src.weights, devices_[size_t(r)],
                                                         TensorParallelRank{c.rank(), c.size(), &c});
    });
  } catch (...) {
    stop_threads();  // the destructor does not run for a constructor that throws
    throw;
  }
}

TensorParallelModel::~TensorParallelModel() {
  for (Socket& s : remotes_) {  // the other nodes stop serving
    try {
      Wire w;
      w.put(uint32_t(Op::Shutdown));
      s.send_message(w.bytes());
    } catch (const Error&) {
    }
  }
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

uint64_t TensorParallelModel::on_ranks_then_remote(const std::function<void(int)>& fn) {
  try {
    on_ranks(fn);
  } catch (...) {
    try {  // the other nodes' answers still come
      wait_remote();
    } catch (const Error&) {
    }
    throw;
  }
  return wait_remote();
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

void TensorParallelModel::send_remote(Op op, const Wire& args) {
  if (remotes_.empty()) return;
  Wire w;
  w.put(uint32_t(op));
  const std::string msg = w.bytes() + args.bytes();
  for (Socket& s : remotes_) s.send_message(msg);
}

void TensorParallelModel::send_step(const BatchInput& batch) {
  if (remotes_.empty()) return;  // one node: nothing to encode on the step's path
  Wire args;
  encode_batch(args, batch);
  send_remote(Op::Forward, args);
}

uint64_t TensorParallelModel::wait_remote() {
  uint64_t value = 0;
  std::string error;
  for (Socket& s : remotes_) {
    Wire r(s.recv_message());
    const auto ok = r.get<uint8_t>();
    value = std::max(value, r.get<uint64_t>());
    std::string why = r.get_string();
    if (!ok && error.empty()) error = s.peer() + ": " + why;
  }
  if (!error.empty()) throw Error("tensor_parallel", "node", error);
  return value;
}

PagedKvCache TensorParallelModel::create_kv_cache(int64_t num_blocks, int64_t block_size) {
  send_remote(Op::CreateCache, Wire().put(num_blocks).put(block_size));
  std::vector<PagedKvCache> shards;
  for (auto& r : ranks_) shards.push_back(r->create_kv_cache(num_blocks, block_size));
  wait_remote();
  return PagedKvCache(std::move(shards));
}

void TensorParallelModel::copy_kv_block(PagedKvCache& cache, int64_t src, int64_t dst) {
  send_remote(Op::CopyBlock, Wire().put(src).put(dst));
  cache.copy_block(src, dst);
  wait_remote();
}

Tensor TensorParallelModel::forward_batch(const BatchInput& batch, PagedKvCache& cache) {
  send_step(batch);
  std::vector<Tensor> out(ranks_.size());
  on_ranks_then_remote([&](int r) {
    Tensor t = ranks_[size_t(r)]->forward_batch(batch, shard_of(cache, r));
    if (r == 0) out[0] = std::move(t);
  });
  return out[0];
}

std::vector<int32_t> TensorParallelModel::forward_batch_argmax(const BatchInput& batch, PagedKvCache& cache) {
  send_step(batch);
  std::vector<int32_t> ids;
  on_ranks_then_remote([&](int r) {
    std::vector<int32_t> v = ranks_[size_t(r)]->forward_batch_argmax(batch, shard_of(cache, r));
    if (r == 0) ids = std::move(v);
  });
  return ids;
}

std::vector<ops::SampledToken> TensorParallelModel::forward_batch_sample(const BatchInput& batch, PagedKvCache& cache,
                                                                         ops::SampleBatch& sample) {
  send_step(batch);
  std::vector<ops::SampledToken> out;
  on_ranks_then_remote([&](int r) {
    if (r == 0)
      out = ranks_[0]->forward_batch_sample(batch, shard_of(cache, 0), sample);
    else
      ranks_[size_t(r)]->forward_batch_argmax(batch, shard_of(cache, r));
  });
  return out;
}

void TensorParallelModel::prepare(PagedKvCache& cache, int64_t max_num_seqs, int64_t max_model_len,
                                  bool enforce_eager) {
  send_remote(Op::Prepare, Wire().put(max_num_seqs).put(max_model_len).put(uint8_t(enforce_eager)));
  on_ranks_then_remote(
      [&](int r) { ranks_[size_t(r)]->prepare(shard_of(cache, r), max_num_seqs, max_model_len, enforce_eager); });
}

size_t TensorParallelModel::activation_bytes(int64_t max_batched_tokens, int64_t max_num_seqs) {
  send_remote(Op::ActivationBytes, Wire().put(max_batched_tokens).put(max_num_seqs));
  std::vector<size_t> bytes(ranks_.size());
  const uint64_t remote = on_ranks_then_remote(
      [&](int r) { bytes[size_t(r)] = ranks_[size_t(r)]->activation_bytes(max_batched_tokens, max_num_seqs); });
  return std::max<size_t>(size_t(remote), *std::max_element(bytes.begin(), bytes.end()));
}

double TensorParallelModel::graph_step_ms(int64_t batch, int reps) {
  send_remote(Op::GraphStep, Wire().put(batch).put(int32_t(reps)));
  std::vector<double> ms(ranks_.size());
  on_ranks_then_remote([&](int r) { ms[size_t(r)] = ranks_[size_t(r)]->graph_step_ms(batch, reps); });
  return ms[0];
}

void TensorParallelModel::serve_node(Socket& node0) {
  std::optional<PagedKvCache> cache;
  auto need_cache = [&]() -> PagedKvCache& {
    if (!cache) fail("tensor_parallel", "node", "node 0 ran a step before creating the KV cache");
    return *cache;
  };
  for (;;) {
    Wire in(node0.recv_message());
    const auto op = Op(in.get<uint32_t>());
    if (op == Op::Shutdown) return;
    uint64_t value = 0;
    std::string error;
    try {
      switch (op) {
        case Op::CreateCache: {
          const auto nb = in.get<int64_t>(), bs = in.get<int64_t>();
          cache.reset();
          std::vector<PagedKvCache> shards;
          for (auto& r : ranks_) shards.push_back(r->create_kv_cache(nb, bs));
          cache.emplace(std::move(shards));
          break;
        }
        case Op::CopyBlock: {
          const auto src = in.get<int64_t>(), dst = in.get<int64_t>();
          need_cache().copy_block(src, dst);
          break;
        }
        case Op::Prepare: {
          const auto seqs = in.get<int64_t>(), len = in.get<int64_t>();
          const bool eager = in.get<uint8_t>() != 0;
          PagedKvCache& c = need_cache();
          on_ranks([&](int r) { ranks_[size_t(r)]->prepare(shard_of(c, r), seqs, len, eager); });
          break;
        }
        case Op::ActivationBytes: {
          const auto tokens = in.get<int64_t>(), seqs = in.get<int64_t>();
          std::vector<size_t> bytes(ranks_.size());
          on_ranks([&](int r) { bytes[size_t(r)] = ranks_[size_t(r)]->activation_bytes(tokens, seqs); });
          value = *std::max_element(bytes.begin(), bytes.end());
          break;
        }
        case Op::Forward: {
          const BatchInput b = decode_batch(in);
          PagedKvCache& c = need_cache();
          on_ranks([&](int r) { ranks_[size_t(r)]->forward_batch_argmax(b, shard_of(c, r)); });
          break;
        }
        case Op::GraphStep: {
          const auto batch = in.get<int64_t>();
          const auto reps = in.get<int32_t>();
          on_ranks([&](int r) { ranks_[size_t(r)]->graph_step_ms(batch, reps); });
          break;
        }
        default: fail("tensor_parallel", "node", "unknown call {} from node 0", uint32_t(op));
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    Wire out;
    out.put(uint8_t(error.empty())).put(value).put_string(error);
    node0.send_message(out.bytes());
  }
}

namespace {

// The devices of this node's ranks: `local` of them from `first`.
std::vector<Device> local_devices(Device first, int local) {
  std::vector<Device> devices;
  for (int i = 0; i < local; ++i) {
    devices.push_back(first.is_cpu() ? kCpu : Device{first.kind, first.index + i});
    if (!first.is_cpu()) device_total_memory(devices.back());  // throws, naming the device, when it is absent
  }
  return devices;
}

// Multi-node start-up: node 0 accepts the other nodes, hands out the NCCL
// id (CUDA) and builds the communicators with them.
std::unique_ptr<Model> load_cluster(const std::string& path, Device first, int size, const ClusterSpec& k,
                                    const std::string& quantization) {
  const char* src = "tensor_parallel";
  if (k.nnodes < 1 || k.node_rank < 0 || k.node_rank >= k.nnodes)
    fail(src, "node_rank", "node {} of {} is invalid; expected 0 to nnodes - 1", k.node_rank, k.nnodes);
  if (size % k.nnodes != 0)
    fail(src, "tensor_parallel_size", "{} ranks do not split over {} nodes; give each node the same number", size,
         k.nnodes);
  const int local = size / k.nnodes, first_rank = k.node_rank * local;
  if (first.is_cpu() && local != 1)
    fail(src, "tensor_parallel_size",
         "on the CPU a multi-node job runs one rank per node; use --tensor-parallel-size {}", k.nnodes);
  const LoadedCheckpoint dec = load_checkpoint(path, quantization);
  const std::vector<Device> devices = local_devices(first, local);
  std::vector<Socket> nodes;  // node 0: to nodes 1 ..
  Socket to_node0;            // other nodes
  std::string nccl_id;
  if (k.node_rank == 0) {
    Listener listener(k.master_port);
    nodes.resize(size_t(k.nnodes - 1));
    if (!first.is_cpu()) nccl_id = nccl_unique_id();
    for (int i = 1; i < k.nnodes; ++i) {
      Socket s = listener.accept(k.timeout_s);
      Wire hello(s.recv_message());
      const auto node = hello.get<int32_t>(), ranks = hello.get<int32_t>();
      if (node < 1 || node >= k.nnodes || nodes[size_t(node - 1)].valid() || ranks != local)
        fail(s.peer(), "node_rank", "node {} with {} ranks cannot join {} nodes of {} ranks", node, ranks, k.nnodes,
             local);
      s.send_message(Wire().put_string(nccl_id).bytes());
      nodes[size_t(node - 1)] = std::move(s);
    }
  } else {
    to_node0 = Socket::connect(k.master_addr, k.master_port, k.timeout_s);
    to_node0.send_message(Wire().put(int32_t(k.node_rank)).put(int32_t(local)).bytes());
    Wire w(to_node0.recv_message());
    nccl_id = w.get_string();
  }
  std::vector<std::unique_ptr<Communicator>> comms;
  if (first.is_cpu())
    comms.push_back(make_tcp_communicator(k.node_rank, k.nnodes, k.master_addr, k.master_port + 1, k.timeout_s));
  else
    comms = join_nccl(nccl_id, size, first_rank, devices);
  auto model = std::make_unique<TensorParallelModel>(dec, devices, std::move(comms), std::move(nodes));
  if (k.node_rank == 0) return model;
  model->serve_node(to_node0);
  return nullptr;
}

}  // namespace

std::unique_ptr<Model> load_model_parallel(const std::string& path, Device first, int size, const ClusterSpec& cluster,
                                           const std::string& quantization) {
  if (size < 1) fail("kite", "tensor_parallel_size", "{} is invalid; expected 1 or more", size);
  if (cluster.nnodes > 1) return load_cluster(path, first, size, cluster, quantization);
  if (size == 1) return load_model_on(path, first, quantization);
  const LoadedCheckpoint dec = load_checkpoint(path, quantization);
  const std::vector<Device> devices = local_devices(first, size);
  std::vector<std::unique_ptr<Communicator>> comms =
      first.is_cpu() ? make_local_communicators(size) : make_nccl_communicators(devices);
  return std::make_unique<TensorParallelModel>(dec, devices, std::move(comms));
}

}  // namespace kite
