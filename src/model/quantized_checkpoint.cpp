#include "model/quantized_checkpoint.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "quant/layouts.h"

namespace kite {

namespace fs = std::filesystem;

bool is_quantized_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "quantize_config.json", ec)) return true;
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::exists(cfg, ec)) return false;
  try {
    return nlohmann::json::parse(read_text_file(cfg.string())).contains("quantization_config");
  } catch (const std::exception&) {
    return false;  // load_model reports a malformed config.json properly
  }
}

LinearLookup quantized_linear_lookup(const Checkpoint& ckpt, const std::string& config_path,
                                     const std::string& quant_config_json) {
  const auto parsed = std::make_shared<quant::ParsedQuantConfig>(
      quant::parse_quantization_config(nlohmann::json::parse(quant_config_json), config_path));
  return [&ckpt, parsed](const std::string& module, int64_t out, int64_t in) {
    const std::string dense = module + ".weight";
    QuantWeight q;
    if (ckpt.has(dense) && dtype_is_float(ckpt.info(dense).dtype) && ckpt.info(dense).dtype != DType::F8_E4M3 &&
        parsed->layout != quant::QuantLayout::BnbNf4) {
      Tensor t = ckpt.get(dense);
      if (t.shape() != Shape{out, in})
        fail(ckpt.file_of(dense), dense, "shape {} but config.json implies [{}, {}]", t.shape_str(), out, in);
      q = QuantWeight::from_dense(t);
    } else {
      // (A GPTQ module's own bits and group size come from its tensors' shapes: quant/layouts_gptq.cpp.)
      q = quant::from_layout(quant::getter_of(ckpt, module + "."), out, in, *parsed, ckpt.path());
    }
    return q;
  };
}

}  // namespace kite
