// The state behind a reprise process group: the rendezvous store and one c10d backend per
// device type, as torch.distributed's default group holds ("cpu:gloo,cuda:nccl").

#pragma once

#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstring>
#include <string>

namespace reprise {

// Reference-counted (a CustomClassHolder, so an autograd node can keep it in a capsule): the
// Rust handle holds one reference, each synchronised BatchNorm node of a live graph another.
struct Group : torch::CustomClassHolder {
  Group(c10::intrusive_ptr<c10d::Store> s, c10::intrusive_ptr<c10d::Backend> gl,
        c10::intrusive_ptr<c10d::Backend> nc, int r, int w)
      : store(std::move(s)), gloo(std::move(gl)), nccl(std::move(nc)), rank(r), world(w) {}
  c10::intrusive_ptr<c10d::Store> store;
  // Gloo, for tensors in host memory.
  c10::intrusive_ptr<c10d::Backend> gloo;
  // NCCL, for CUDA tensors; null where this build or this machine has none.
  c10::intrusive_ptr<c10d::Backend> nccl;
  int rank;
  int world;
};

// The backend for `t`: NCCL for a CUDA tensor where the group has it, Gloo otherwise.
inline c10d::Backend& backend_for(Group* g, const at::Tensor& t) {
  if (t.is_cuda() && g->nccl) {
    return *g->nccl;
  }
  return *g->gloo;
}

// Copies `what` into the caller's buffer `err` of `len` bytes (truncated, NUL-terminated).
inline void set_error(char* err, size_t len, const std::string& what) {
  if (err == nullptr || len == 0) {
    return;
  }
  std::strncpy(err, what.c_str(), len - 1);
  err[len - 1] = '\0';
}

// Sums `t` over the ranks, in place (contiguous, on the device its backend serves).
void allreduce_sum(Group* g, at::Tensor& t);

// Makes the NCCL backend of `rank` of `world` over `store`, bound to CUDA device `device`
// (its communicators are created lazily, at the first collective on a CUDA tensor); throws
// where this build has no NCCL (shim/nccl.cpp defines it when the build script found the
// CUDA and NCCL headers).
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world,
                                            std::chrono::milliseconds op_timeout, int device);

}  // namespace reprise
