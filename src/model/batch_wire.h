#pragma once
// A step's BatchInput as bytes: what node 0 of a multi-node tensor-parallel
// job sends the other nodes (model/tensor_parallel.h). decode_batch reads
// untrusted bytes: it throws kite::Error on a truncated or malformed message
// and checks nothing else (the model's batch check runs next).
#include "core/socket.h"
#include "model/model.h"

namespace kite {

void encode_batch(Wire& w, const BatchInput& b);
BatchInput decode_batch(Wire& w);

}  // namespace kite
