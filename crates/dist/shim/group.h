// The state behind a reprise process group: the rendezvous store and one c10d backend per
// device type, as torch.distributed's default group holds ("cpu:gloo,cuda:nccl").

#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace reprise {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  // Gloo, for tensors in host memory.
  c10::intrusive_ptr<c10d::Backend> gloo;
  // NCCL, for CUDA tensors; null where this build or this machine has none.
  c10::intrusive_ptr<c10d::Backend> nccl;
  int rank;
  int world;
};

// Makes the NCCL backend of `rank` of `world` over `store`, bound to CUDA device `device`
// (its communicators are created lazily, at the first collective on a CUDA tensor); throws
// where this build has no NCCL (shim/nccl.cpp defines it when the build script found the
// CUDA and NCCL headers).
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world,
                                            std::chrono::milliseconds op_timeout, int device);

}  // namespace reprise
