#pragma once
// Index arrays that live on a device (token ids, KV-cache slots, block
// tables, query starts) are checked on the host before a kernel reads them,
// which costs a device-to-host copy and a synchronization per op. A caller
// that built them from state it has already validated (the model's batched
// forward, fed by the engine's block manager) can skip those copies on its
// thread while a TrustedIndices guard lives; CUDA-graph capture needs this,
// since nothing may be copied to the host while capturing. Shapes, dtypes
// and devices are still checked, and host-side indices always are.
namespace kite::ops {

class TrustedIndices {
 public:
  TrustedIndices();
  ~TrustedIndices();
  TrustedIndices(const TrustedIndices&) = delete;
  TrustedIndices& operator=(const TrustedIndices&) = delete;
};

// True while a TrustedIndices lives on this thread.
bool indices_trusted();

}  // namespace kite::ops
