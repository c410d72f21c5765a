#include "tools/kite/model_files.h"

#include "core/error.h"
#include "core/mapped_file.h"

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

}  // namespace kite::cli
