#pragma once
// Reading quantized checkpoints (Kite's, or AutoGPTQ's, AutoAWQ's,
// compressed-tensors', bitsandbytes' layouts: quant/layouts.h) as
// QuantWeights. Writing them is the quantization pipeline's
// (quantize/checkpoint_writer.h).
#include <string>

#include "formats/safetensors.h"
#include "model/weights.h"

namespace kite {

// True when the directory's config.json has a quantization_config (or an
// AutoGPTQ quantize_config.json sits beside it).
bool is_quantized_checkpoint(const std::string& dir);

// For the loader: reads the linear `module` ([out, in]) of a quantized
// checkpoint whose config.json holds `quant_config` (the parsed JSON), on
// the host. Modules stored dense (ignored ones) load as dense.
LinearLookup quantized_linear_lookup(const Checkpoint& ckpt, const std::string& config_path,
                                     const std::string& quant_config_json);

}  // namespace kite
