#pragma once
// safetensors checkpoints: one file, or a Hugging Face model directory with
// model.safetensors or shards listed in model.safetensors.index.json.
// Reading is zero-copy: tensors are views over the memory-mapped file.
//
// File layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
//  "__metadata__": {"key": "value"}}, then the data region; offsets are
// relative to the start of the data region.
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kite {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t offset = 0;  // from start of the data region
  size_t nbytes = 0;
};

class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Parses bytes held elsewhere (fuzzers, tests) without copying them;
  // `owner` keeps them alive (may be null when the caller guarantees the
  // bytes outlive the file and every tensor taken from it).
  static std::shared_ptr<SafetensorsFile> from_memory(const uint8_t* data, size_t size, const std::string& name,
                                                      std::shared_ptr<const void> owner = nullptr);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file (offset) order
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  // Zero-copy CPU view; throws Error(path, name, "not in file") if absent.
  Tensor tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t data_offset() const { return data_offset_; }  // file offset of the data region

 private:
  SafetensorsFile() = default;
  void parse();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::shared_ptr<const void> owner_;
  size_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

class Checkpoint {
 public:
  // A model directory (model.safetensors, or shards named by
  // model.safetensors.index.json) or one .safetensors file. All files are
  // opened (mapped) and validated up front.
  static Checkpoint open(const std::string& path);

  bool has(const std::string& name) const;
  Tensor get(const std::string& name) const;              // throws Error(<dir>, name, "tensor missing from checkpoint")
  const TensorInfo& info(const std::string& name) const;  // same error when absent
  std::vector<std::string> names() const;                 // sorted
  std::string file_of(const std::string& name) const;     // the shard path holding it (for error messages)
  const std::string& path() const { return path_; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // __metadata__ of the index file (sharded; values as strings) or of the single file.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  [[noreturn]] void missing(const std::string& name) const;

  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
  std::map<std::string, std::string> metadata_;
};

// Writes CPU tensors (contiguous or not) in the given order; the JSON header
// is padded with spaces to a multiple of 8 bytes. Throws Error on duplicate
// or empty names, "__metadata__" as a tensor name, or a non-CPU tensor.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kite
