// Fuzzes the multi-node step message (model/batch_wire.h): arbitrary bytes
// either throw kite::Error (truncated, absurd lengths) or decode to a batch
// that encodes and decodes back to itself. Anything else escaping is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "model/batch_wire.h"

namespace {
bool same(const kite::BatchInput& a, const kite::BatchInput& b) {
  return a.tokens == b.tokens && a.positions == b.positions && a.slot_mapping == b.slot_mapping &&
         a.query_start == b.query_start && a.context_lens == b.context_lens && a.block_tables == b.block_tables &&
         a.max_blocks == b.max_blocks && a.logit_rows == b.logit_rows;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kite::Wire in(std::string(reinterpret_cast<const char*>(data), size));
  kite::BatchInput b;
  try {
    b = kite::decode_batch(in);
  } catch (const kite::Error&) {
    return 0;
  }
  kite::Wire out;
  kite::encode_batch(out, b);
  kite::Wire back(out.bytes());
  if (!same(kite::decode_batch(back), b)) std::abort();
  return 0;
}
