#pragma once
// The backend layer: one interface over devices. The CPU backend is always
// built; the CUDA backend registers itself when it was compiled in and a
// device is present. Ops (backend/ops/*.h) dispatch on their tensors' device.
#include <string>

#include "core/device.h"

namespace kite {

// Registers every compiled-in backend (idempotent). Call once at start-up;
// ops also call it lazily.
void init_backends();

bool cuda_available();
// Waits for all work queued on `device` to finish (no-op on CPU).
void synchronize(Device device);
// A short description: "cpu (avx512, 2 threads)", "cuda:0 (NVIDIA H100 80GB HBM3)".
std::string device_description(Device device);

}  // namespace kite
