#pragma once
// Quantize at load (`--quantization fp8|int8|int4|nf4`, as vLLM's flag and
// transformers' load_in_4bit): an unquantized checkpoint's linears are
// quantized round-to-nearest on the host, one at a time, before any device
// sees them (so a GPU never holds the BF16 model).
#include <string>

#include "model/weights.h"
#include "quant/rtn.h"

namespace kite {

// "int8" (W8A16, per channel), "int4" (W4A16, symmetric, groups of 128),
// "nf4" (blocks of 64), "fp8" (E4M3 weights per channel, activations
// dynamic per token): what `kite quantize --method` writes for the same
// names (nf4 without double quantization). kite::Error naming
// --quantization otherwise.
quant::QuantSpec quantization_spec(const std::string& name);

// Replaces every dense linear of `w` but lm_head (kept dense, as vLLM and
// bitsandbytes keep it) by its RTN quantization. kite::Error when a linear
// is already quantized (the checkpoint is: --quantization is for
// unquantized checkpoints) or cannot take the spec (e.g. a 4-bit group that
// does not divide its width). Returns a one-line summary for the start-up log.
std::string quantize_linears_at_load(ModelWeights& w, const std::string& name, const std::string& source);

}  // namespace kite
