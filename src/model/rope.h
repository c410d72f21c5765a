#pragma once
// Rotary embedding frequencies for every rope type Kite supports.
#include <cstdint>
#include <vector>

#include "formats/hf_config.h"

namespace kite {

struct RopeFrequencies {
  std::vector<float> inv_freq;  // [rotary_dim / 2]
  float attention_factor = 1.0f;
};

// Frequencies for a forward whose largest position + 1 is `seq_len` (only
// "dynamic" NTK scaling depends on it, as in HF: it grows the base once the
// sequence passes the original context).
RopeFrequencies rope_frequencies(const ModelConfig& config, int64_t seq_len);
// Whether rope_frequencies depends on seq_len.
bool rope_is_dynamic(const ModelConfig& config);

}  // namespace kite
