#pragma once
// Quantized checkpoints on disk: writing what `kite quantize` produced in
// the layout of the tool users know for the method (quant/layouts.h), and
// reading such checkpoints (Kite's or the tools' own) back as QuantWeights.
#include <string>

#include "formats/safetensors.h"
#include "model/decoder.h"
#include "model/quantize.h"

namespace kite {

// True when the directory's config.json has a quantization_config (or an
// AutoGPTQ quantize_config.json sits beside it).
bool is_quantized_checkpoint(const std::string& dir);

// The layout a method is written in: gptq -> AutoGPTQ (v1 symmetric, v2
// with zero points), awq -> AutoAWQ GEMM, nf4 -> bitsandbytes, fp8 ->
// compressed-tensors float-quantized, w8a8 -> compressed-tensors
// int-quantized, int8 / int4 -> compressed-tensors pack-quantized.
std::string_view layout_for_method(QuantMethod m);

// Writes the quantized `model` to out_dir: safetensors (the linears in the
// method's layout, every other tensor as in src_dir, norms updated where
// AWQ/SmoothQuant folded scales into them), config.json with its
// quantization_config, the tokenizer and generation files copied, and
// quantization_report.json.
void save_quantized_checkpoint(const DecoderModel& model, const std::string& src_dir, const std::string& out_dir,
                               const QuantizeOptions& options, const QuantizeReport& report);

// For the loader: reads the linear `module` ([out, in]) of a quantized
// checkpoint whose config.json holds `quant_config` (the parsed JSON).
// Modules stored dense (ignored ones) load as dense.
LinearLookup quantized_linear_lookup(const Checkpoint& ckpt, const std::string& config_path,
                                     const std::string& quant_config_json, Device device);

}  // namespace kite
