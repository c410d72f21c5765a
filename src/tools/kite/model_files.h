#pragma once
// Resolving the files that go with a --model path (tokenizer, generation
// defaults, chat template) for the CLI commands.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "formats/hf_config.h"
#include "model/model.h"
#include "model/tensor_parallel.h"
#include "tokenizer/tokenizer.h"

namespace kite::cli {

// The directory holding a model: PATH itself, or its parent for a file.
std::string model_dir(const std::string& path);
// The tokenizer of a model directory or .gguf, or of a tokenizer file.
std::unique_ptr<Tokenizer> load_tokenizer_for(const std::string& path);
// Stop ids: generation_config.json's eos ids, else the config's, else the tokenizer's.
std::vector<int32_t> stop_ids_for(const std::string& path, const Model& model, const Tokenizer& tok);
// "cpu", "cuda", "cuda:N" or "auto" (CUDA when a device is present, else
// the CPU); kite::Error otherwise or when CUDA is asked for but absent.
Device parse_device(const std::string& spec);
// load_model on `device` ("cpu", "cuda", "auto", ...): CUDA runs the BF16
// device decoder (model/decoder.h); a tensor_parallel_size above 1
// splits it over that many devices from `device` on (model/tensor_parallel.h;
// CPU ranks are threads).
// With several nodes (cluster.nnodes > 1) only node 0 gets a model: the
// others serve node 0's steps and then get nullptr (the command exits 0).
// quantization: fp8, int8, int4 or nf4 quantizes an unquantized
// checkpoint's linears at load (--quantization); empty: as stored.
std::unique_ptr<Model> load_model_for(const std::string& path, const std::string& device, int tensor_parallel_size = 1,
                                      const ClusterSpec& cluster = {}, const std::string& quantization = "");
// Registers --quantization on a command.
void add_quantization_option(CLI::App& c, std::string& quantization);
// Reads a whole text file (kite::Error naming it when missing).
std::string read_text(const std::string& path);

}  // namespace kite::cli
