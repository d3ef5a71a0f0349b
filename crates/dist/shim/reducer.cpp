// PyTorch DistributedDataParallel's own gradient engine, c10d::Reducer, driven as
// torch/nn/parallel/distributed.py (DistributedDataParallel._ddp_init_helper, _pre_forward,
// _post_forward) drives it: the parameters in buckets, an autograd hook on each parameter's
// gradient accumulator that copies its gradient (divided by the world size) into its bucket,
// and each bucket's all-reduce launched as soon as its last gradient is in, while the rest of
// the backward runs; at the end of the backward the averaged buckets are copied back into the
// parameters' gradients.
//
// The Reducer reaches the backends through a c10d::ProcessGroup (its collectives are the
// dispatcher's c10d ops), made here over the group's own Gloo backend for host tensors and
// NCCL backend, where there is one, for CUDA tensors.

#include "group.h"

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using reprise::Group;
using reprise::set_error;

// c10d's Reducer, able to wait for the all-reduces it has launched: a Reducer dropped in the
// middle of an iteration (its backward ended by an error, a parameter left out) may still have
// buckets whose all-reduce is running on the backend's threads, writing into the buckets.
struct Reducer : c10d::Reducer {
  using c10d::Reducer::Reducer;

  // Waits until every bucket's launched all-reduce has ended (its result is not needed).
  void wait_in_flight() {
    for (auto& bucket : buckets_) {
      if (bucket.future_work && !bucket.future_work->completed()) {
        bucket.future_work->wait();
      }
    }
  }
};

struct Ddp {
  // Keeps the group (and so its backends) alive as long as the Reducer.
  c10::intrusive_ptr<Group> group;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::unique_ptr<Reducer> reducer;

  Ddp() = default;
  Ddp(const Ddp&) = delete;
  Ddp& operator=(const Ddp&) = delete;
  // The Reducer goes only after its in-flight all-reduces have ended.
  ~Ddp() {
    if (reducer) {
      try {
        reducer->wait_in_flight();
      } catch (...) {
        // A failed all-reduce has ended too.
      }
    }
  }
};

}  // namespace

extern "C" {

// A Reducer over the `n` parameters `params` (leaf tensors that require gradients, in the
// order every rank lists them alike). As DDP with its defaults (find_unused_parameters off,
// gradient_as_bucket_view off): the first iteration reduces every gradient in one bucket; from
// the second on, the buckets follow the order in which the first backward produced the
// gradients, the first of at most `first_bucket_bytes`, the others of at most `bucket_bytes`
// (DDP: 1 MiB and 25 MiB). With `find_unused` a parameter that received no gradient in a
// backward is marked ready (after a traversal of the graph from the outputs passed to
// reprise_ddp_prepare), as DDP's find_unused_parameters=True does. Returns nullptr and the
// reason in `err` on failure.
void* reprise_ddp_new(void* group, const at::Tensor* const* params, size_t n, int64_t bucket_bytes,
                      int64_t first_bucket_bytes, int find_unused, char* err, size_t err_len) {
  try {
    auto g = c10::intrusive_ptr<Group>::reclaim_copy(static_cast<Group*>(group));
    std::vector<at::Tensor> ps;
    ps.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      ps.push_back(*params[i]);
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(g->store, g->rank, g->world);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, g->gloo);
    if (g->nccl) {
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, g->nccl);
    }
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    const std::vector<bool> sparse(ps.size(), false);
    // DDP: one unbounded bucket until the buckets are rebuilt in gradient order, unless unused
    // parameters are searched for (then the sizes hold from the start).
    std::vector<size_t> limits;
    if (find_unused != 0) {
      limits = {static_cast<size_t>(first_bucket_bytes), static_cast<size_t>(bucket_bytes)};
    } else {
      limits = {std::numeric_limits<size_t>::max()};
    }
    auto [indices, per_bucket] = c10d::compute_bucket_assignment_by_size(ps, limits, sparse);
    // Reversed: the gradients come roughly in the reverse of the order the parameters are
    // listed in (DDP's note at the same place).
    std::vector<std::vector<size_t>> rev(indices.rbegin(), indices.rend());
    std::unordered_map<size_t, std::string> names;
    auto ddp = std::make_unique<Ddp>();
    ddp->group = g;
    ddp->pg = pg;
    ddp->reducer = std::make_unique<Reducer>(
        ps, std::move(rev), pg, sparse, bucket_bytes, find_unused != 0,
        /*gradient_as_bucket_view=*/false, names, first_bucket_bytes,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
        /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
    return ddp.release();
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return nullptr;
  }
}

// What DDP's forward does before the backward of a training step: rebuilds the buckets in
// gradient order once the first iteration has recorded it, and arms the autograd hooks, so that
// the next backward all-reduces the gradients while it runs. `outputs` (`n` of them, the
// losses) are searched for unused parameters where the Reducer was made with `find_unused`.
int reprise_ddp_prepare(void* ddp, const at::Tensor* const* outputs, size_t n, char* err, size_t err_len) {
  try {
    auto* d = static_cast<Ddp*>(ddp);
    d->reducer->prepare_for_forward();
    d->reducer->rebuild_buckets();
    std::vector<at::Tensor> outs;
    for (size_t i = 0; i < n; ++i) {
      outs.push_back(*outputs[i]);
    }
    d->reducer->prepare_for_backward(outs);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// The number of buckets the Reducer now has (one until they are rebuilt after the first
// iteration).
int64_t reprise_ddp_buckets(void* ddp) {
  auto* d = static_cast<Ddp*>(ddp);
  return static_cast<int64_t>(d->reducer->get_grad_buckets(/*return_zero_tensors=*/true).size());
}

// Waits for the all-reduces the Reducer has in flight, removes its hooks and frees it.
void reprise_ddp_free(void* ddp) {
  auto* d = static_cast<Ddp*>(ddp);
  try {
    delete d;
  } catch (...) {
    // ~Reducer may throw (noexcept(false)); nothing more to release.
  }
}

}  // extern "C"
