// A C interface to the c10d engine inside LibTorch (the one torch.distributed and
// DistributedDataParallel run on): a TCPStore rendezvous, a Gloo process group for host
// tensors and, where built (shim/nccl.cpp), an NCCL one for CUDA tensors, and the
// collectives a data-parallel step needs. Every function catches C++ exceptions and returns
// their message, so that no exception crosses into Rust.

#include "group.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace reprise {
void allreduce_sum(Group* g, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  backend_for(g, t).allreduce(ts, opts)->wait();
}
}  // namespace reprise

#ifndef REPRISE_NCCL
namespace reprise {
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                            std::chrono::milliseconds, int) {
  throw std::runtime_error(
      "this build of reprise has no NCCL backend (the build found no CUDA or NCCL headers "
      "beside LibTorch; `just setup` installs them)");
}
}  // namespace reprise
#endif

namespace {

using reprise::backend_for;
using reprise::Group;

using reprise::set_error;

}  // namespace

extern "C" {

// Joins the group `world` ranks form through the TCPStore at host:port (rank 0 serves it).
// Returns nullptr and the reason in `err` on failure (a store that cannot be reached within
// `timeout_ms`, say); a collective then waits at most `op_timeout_ms` for the other ranks.
// With `cuda_device` >= 0 the group also gets an NCCL backend on that GPU for CUDA tensors
// (failing the join where it cannot be made).
void* reprise_dist_init(const char* host, int port, int rank, int world, int timeout_ms,
                        int op_timeout_ms, int cuda_device, char* err, size_t err_len) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    // Every rank counts itself in, then waits at most the join timeout for all `world` of them:
    // a rank that never comes is an error then, not a wait of the collective timeout inside
    // Gloo's connection set-up (which waits for every peer).
    const std::string joined = "reprise/joined";
    store->add(joined, 1);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const auto n = store->add(joined, 0);
      if (n >= world) {
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        throw std::runtime_error("only " + std::to_string(n) + " of the " +
                                 std::to_string(world) + " ranks came");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    auto options =
        c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(op_timeout_ms));
    options->devices.clear();
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
        std::string(host)));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    c10::intrusive_ptr<c10d::Backend> nccl;
    if (cuda_device >= 0) {
      try {
        nccl = reprise::make_nccl(store, rank, world,
                                  std::chrono::milliseconds(op_timeout_ms), cuda_device);
      } catch (const std::exception& e) {
        throw std::runtime_error("the NCCL backend on cuda:" + std::to_string(cuda_device) +
                                 ": " + e.what());
      }
    }
    return c10::make_intrusive<Group>(store, pg, nccl, rank, world).release();
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return nullptr;
  }
}

// A connection of its own to the group's TCPStore at host:port (served by rank 0), for a
// thread of its own (the heartbeat): its operations never wait behind the group's (a TCPStore
// client serialises its operations). Returns nullptr and the reason in `err` on failure.
void* reprise_store_connect(const char* host, int port, int timeout_ms, char* err,
                            size_t err_len) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = false;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    return c10::make_intrusive<c10d::TCPStore>(std::string(host), opts).release();
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return nullptr;
  }
}

// Adds `delta` to the counter `key` of the store (0: reads it) and writes its new value to
// `out`; 1 and the reason in `err` on failure.
int reprise_store_add(void* store, const char* key, int64_t delta, int64_t* out, char* err,
                      size_t err_len) {
  try {
    *out = static_cast<c10d::TCPStore*>(store)->add(std::string(key), delta);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Closes a connection of reprise_store_connect.
void reprise_store_free(void* store) {
  c10::intrusive_ptr<c10d::TCPStore>::reclaim(static_cast<c10d::TCPStore*>(store));
}

// Sums `t` (in place) over the ranks.
int reprise_dist_allreduce_sum(void* group, at::Tensor* t, char* err, size_t err_len) {
  try {
    reprise::allreduce_sum(static_cast<Group*>(group), *t);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Copies `t` of rank `root` into `t` of every rank.
int reprise_dist_broadcast(void* group, at::Tensor* t, int root, char* err, size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    backend_for(g, *t).broadcast(ts, opts)->wait();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Waits until every rank has called it.
int reprise_dist_barrier(void* group, char* err, size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    g->gloo->barrier()->wait();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Mixed precision: turns ATen's autocast on for `device` (0: CPU, 1: CUDA) with `dtype`
// (0: bfloat16, 1: float16) and enters one level of nesting; returns whether it was on before,
// for reprise_autocast_exit. (tch binds autocast for CUDA only, and with float16.)
int reprise_autocast_enter(int device, int dtype) {
  const auto dev = device == 1 ? at::kCUDA : at::kCPU;
  const bool was = at::autocast::is_autocast_enabled(dev);
  at::autocast::set_autocast_dtype(dev, dtype == 1 ? at::kHalf : at::kBFloat16);
  at::autocast::set_autocast_enabled(dev, true);
  at::autocast::increment_nesting();
  return was ? 1 : 0;
}

// Leaves a level of reprise_autocast_enter, restoring the state before it (and dropping the
// cache of cast weights when the outermost level ends).
void reprise_autocast_exit(int device, int was) {
  const auto dev = device == 1 ? at::kCUDA : at::kCPU;
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(dev, was != 0);
}

// Whether the group has an NCCL backend for CUDA tensors.
int reprise_dist_has_nccl(void* group) {
  return static_cast<Group*>(group)->nccl ? 1 : 0;
}

// Leaves the group.
void reprise_dist_free(void* group) {
  // Drops the handle's reference; graphs still holding the group keep it until they go.
  c10::intrusive_ptr<Group>::reclaim(static_cast<Group*>(group));
}

}  // extern "C"
