#pragma once
// Writing what `kite quantize` produced as a checkpoint in the layout of the
// tool users know for the method (quant/layouts.h).
#include <string>
#include <string_view>

#include "model/decoder.h"
#include "quantize/quantize.h"

namespace kite {

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

}  // namespace kite
