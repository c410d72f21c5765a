#include "tools/kite/model_files.h"

#include "backend/backend.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "model/decoder.h"
#include "model/tensor_parallel.h"
#include "tools/kite/commands.h"

namespace kite::cli {

namespace fs = std::filesystem;

std::string model_dir(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  return fs::path(path).parent_path().string();
}

std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "model", "no such file or directory");
  return Tokenizer::load(path);
}

std::vector<int32_t> stop_ids_for(const std::string& path, const Model& model, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  std::error_code ec;
  if (fs::is_directory(path, ec)) ids = load_generation_config(path).eos_token_ids;
  if (ids.empty()) ids = model.config().eos_token_ids;
  if (ids.empty() && tok.eos_id()) ids.push_back(*tok.eos_id());
  return ids;
}

std::string read_text(const std::string& path) { return read_text_file(path); }

Device parse_device(const std::string& spec) {
  if (spec == "cpu") return kCpu;
  if (spec == "auto") return cuda_available() ? Device{DeviceKind::CUDA, 0} : kCpu;
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (spec.size() > 5) {
      try {
        index = std::stoi(spec.substr(5));
      } catch (const std::exception&) {
        fail("--device", "device", "'{}' is not a device; use cpu, cuda, cuda:N or auto", spec);
      }
    }
    if (!cuda_available())
      fail("--device", "device", "'{}' asked for CUDA but this build or machine has no CUDA device; use --device cpu",
           spec);
    return Device{DeviceKind::CUDA, index};
  }
  fail("--device", "device", "'{}' is not a device; use cpu, cuda, cuda:N or auto", spec);
}

std::unique_ptr<Model> load_model_for(const std::string& path, const std::string& device, int tensor_parallel_size,
                                      const ClusterSpec& cluster, const std::string& quantization) {
  if (tensor_parallel_size < 1)
    fail("--tensor-parallel-size", "tensor-parallel-size", "{} is invalid; expected 1 or more", tensor_parallel_size);
  const Device dev = parse_device(device);
  auto model = load_model_parallel(path, dev, tensor_parallel_size, cluster, quantization);
  if (model)
    std::fprintf(stderr, "kite: %s on %s%s (--device %s)\n", path.c_str(), dev.str().c_str(),
                 tensor_parallel_size > 1 ? fmt::format(" and {} more devices", tensor_parallel_size - 1).c_str() : "",
                 device.c_str());
  if (!model)
    std::fprintf(stderr, "kite: node %d of %d served node 0 until it finished\n", cluster.node_rank, cluster.nnodes);
  return model;
}

void add_quantization_option(CLI::App& c, std::string& quantization) {
  c.add_option("--quantization", quantization,
               "Quantize an unquantized checkpoint's linears at load: fp8, int8, int4 or nf4 (lm_head kept)");
}

void add_tensor_parallel_option(CLI::App& c, int& size, ClusterSpec& cluster) {
  c.add_option("--tensor-parallel-size,--tp", size,
               "Split the model over this many devices (CUDA: cuda:0.. through NCCL; cpu: threads); over all nodes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c.add_option("--nnodes", cluster.nnodes, "Nodes (processes) of a multi-node tensor-parallel job")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c.add_option("--node-rank", cluster.node_rank, "This node's rank; node 0 runs the engine, the others serve it")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c.add_option("--master-addr", cluster.master_addr, "Node 0's address")->capture_default_str();
  c.add_option("--master-port", cluster.master_port, "Node 0's port (and the next one for CPU collectives)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65534));
}

}  // namespace kite::cli
