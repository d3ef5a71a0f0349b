// The NCCL backend of a reprise process group, compiled only where the build found the CUDA
// runtime's and NCCL's headers beside LibTorch (see build.rs): the backend DDP uses for CUDA
// tensors, from libtorch_cuda.

#include "group.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

namespace reprise {

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world,
                                            std::chrono::milliseconds op_timeout, int device) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = op_timeout;
  // Its own key space in the shared store, as torch.distributed gives each backend.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl/", store);
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, options);
  // The device barriers and the first communicator use: this rank's own GPU.
  pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  return pg;
}

}  // namespace reprise

// The peak of the bytes CUDA's caching allocator has handed to tensors on `device` since the
// last reset (what torch.cuda.max_memory_allocated reports); with `reset`, starts a new peak
// after reading it. -1 where the allocator cannot say (no such device).
extern "C" int64_t reprise_cuda_peak_bytes(int device, int reset) {
  try {
    auto d = static_cast<c10::DeviceIndex>(device);
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d);
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    int64_t peak = stats.allocated_bytes[agg].peak;
    if (reset) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(d);
    }
    return peak;
  } catch (...) {
    return -1;
  }
}
