// The NCCL backend of a reprise process group, compiled only where the build found the CUDA
// runtime's and NCCL's headers beside LibTorch (see build.rs): the backend DDP uses for CUDA
// tensors, from libtorch_cuda.

#include "group.h"

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
