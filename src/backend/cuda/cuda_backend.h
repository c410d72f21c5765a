#pragma once
// CUDA backend entry points, called only from backend/registry.cpp.
#include <string>

#include "backend/kernels.h"

namespace kite::cuda {

// Registers CUDA device memory and fills the CUDA kernel table. Returns
// false (registering nothing) when no CUDA device is usable.
bool register_backend(Kernels& table);
void synchronize(int device_index);
std::string description(int device_index);

}  // namespace kite::cuda
