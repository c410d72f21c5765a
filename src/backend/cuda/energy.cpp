// The GPU's cumulative energy counter through NVML, loaded at run time
// (libnvidia-ml.so.1 ships with the driver; the toolkit need not have NVML's
// headers). The few entry points used are declared here with NVML's
// documented C signatures.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <mutex>
#include <optional>

#include "backend/cuda/cuda_backend.h"

namespace kite::cuda {

namespace {

using NvmlDevice = void*;
using NvmlInit = int (*)();
using NvmlByPci = int (*)(const char*, NvmlDevice*);
using NvmlEnergy = int (*)(NvmlDevice, unsigned long long*);  // millijoules since the driver loaded

struct Nvml {
  NvmlByPci by_pci = nullptr;
  NvmlEnergy energy = nullptr;
  bool ok = false;
};

const Nvml& nvml() {
  static Nvml n = [] {
    Nvml r;
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return r;
    auto init = reinterpret_cast<NvmlInit>(dlsym(lib, "nvmlInit_v2"));
    r.by_pci = reinterpret_cast<NvmlByPci>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    r.energy = reinterpret_cast<NvmlEnergy>(dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
    r.ok = init && r.by_pci && r.energy && init() == 0;
    return r;
  }();
  return n;
}

}  // namespace

std::optional<double> device_energy_joules(int device_index) {
  const Nvml& n = nvml();
  if (!n.ok) return std::nullopt;
  char bus[32] = {};
  // The CUDA index maps to NVML by PCI bus id (CUDA_VISIBLE_DEVICES reorders CUDA's indices only).
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, device_index) != cudaSuccess) return std::nullopt;
  NvmlDevice dev = nullptr;
  if (n.by_pci(bus, &dev) != 0) return std::nullopt;
  unsigned long long mj = 0;
  if (n.energy(dev, &mj) != 0) return std::nullopt;  // e.g. a GPU older than Volta
  return double(mj) / 1000.0;
}

}  // namespace kite::cuda
