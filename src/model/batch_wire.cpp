#include "model/batch_wire.h"

namespace kite {

void encode_batch(Wire& w, const BatchInput& b) {
  w.put_vector(b.tokens).put_vector(b.positions).put_vector(b.slot_mapping).put_vector(b.query_start);
  w.put_vector(b.context_lens).put_vector(b.block_tables).put(b.max_blocks).put_vector(b.logit_rows);
}

BatchInput decode_batch(Wire& w) {
  BatchInput b;
  b.tokens = w.get_vector<int32_t>();
  b.positions = w.get_vector<int32_t>();
  b.slot_mapping = w.get_vector<int32_t>();
  b.query_start = w.get_vector<int32_t>();
  b.context_lens = w.get_vector<int32_t>();
  b.block_tables = w.get_vector<int32_t>();
  b.max_blocks = w.get<int32_t>();
  b.logit_rows = w.get_vector<int32_t>();
  return b;
}

}  // namespace kite
