// Synchronised batch normalisation: batch statistics over the rows of every rank, as
// PyTorch's nn.SyncBatchNorm computes them (torch/nn/modules/_functions.py, SyncBatchNorm), in
// an autograd function whose backward sums the gradient's statistics over the ranks too. A
// data-parallel step with it computes what one process computes with BatchNorm on the whole
// batch.

#include "group.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dimensions a channel's statistics run over: all but dimension 1.
std::vector<int64_t> stat_dims(const at::Tensor& x) {
  std::vector<int64_t> d{0};
  for (int64_t i = 2; i < x.dim(); ++i) {
    d.push_back(i);
  }
  return d;
}

// A per-channel vector shaped to broadcast against `x`.
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = v.numel();
  return v.view(shape);
}

struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t handle,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            double momentum, double eps) {
    // A reference of the node's own: the group lives as long as this graph.
    auto group = c10::intrusive_ptr<reprise::Group>::reclaim_copy(
        reinterpret_cast<reprise::Group*>(handle));
    auto* g = group.get();
    const auto dims = stat_dims(x);
    const int64_t channels = x.size(1);
    // The mean over every rank's rows: one all-reduce of (Σx per channel, row count).
    auto wire = x.is_cuda() && g->nccl ? x.device() : at::Device(at::kCPU);
    // Reduced in double (a tensor of C + 1): the row count stays exact at any size.
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto count = at::full({1}, static_cast<double>(x.numel() / channels),
                          x.options().dtype(at::kDouble));
    auto first = at::cat({x.sum(dims, false, acc).to(at::kDouble), count}).to(wire).contiguous();
    reprise::allreduce_sum(g, first);
    first = first.to(x.device());
    const auto n = first[channels].item<double>();
    auto mean = (first.narrow(0, 0, channels) / n).to(acc);
    // The biased variance about it: a second all-reduce of Σ(x − mean)², as two-pass as the
    // single-process kernel (no cancellation of E[x²] − E[x]²).
    auto centred = x - per_channel(mean, x);
    auto m2 = centred.square().sum(dims, false, acc).to(wire).contiguous();
    reprise::allreduce_sum(g, m2);
    auto var = m2.to(x.device()) / n;
    auto invstd = (var + eps).rsqrt();
    auto y = centred * per_channel(invstd, x);
    if (running_mean.defined() && running_var.defined()) {
      at::NoGradGuard no_grad;
      // As BatchNorm's: the running variance takes the unbiased estimate.
      const double unbias = n > 1 ? n / (n - 1) : 1.0;
      running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1.0 - momentum)
          .add_((var * unbias).to(running_var.scalar_type()), momentum);
    }
    ctx->save_for_backward({y, invstd});
    ctx->saved_data["group"] = c10::IValue::make_capsule(group);
    ctx->saved_data["n"] = n;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    const auto& invstd = saved[1];
    auto holder = ctx->saved_data["group"].toCapsule();
    auto* g = static_cast<reprise::Group*>(holder.get());
    const double n = ctx->saved_data["n"].toDouble();
    const auto& dy = grads[0];
    const auto dims = stat_dims(y);
    const int64_t channels = y.size(1);
    // Σ dy and Σ dy·ŷ over every rank's rows (each rank's dy is its own loss's gradient), in
    // one all-reduce, then BatchNorm's input gradient with those sums.
    auto wire = dy.is_cuda() && g->nccl ? dy.device() : at::Device(at::kCPU);
    const auto acc = dy.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto sums =
        at::cat({dy.sum(dims, false, acc), (dy * y).sum(dims, false, acc)}).to(wire).contiguous();
    reprise::allreduce_sum(g, sums);
    sums = sums.to(dy.device());
    auto mean_dy = sums.narrow(0, 0, channels) / n;
    auto mean_dy_y = sums.narrow(0, channels, channels) / n;
    auto dx = (dy - per_channel(mean_dy, y) - y * per_channel(mean_dy_y, y)) *
              per_channel(invstd, y);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

using reprise::set_error;

}  // namespace

extern "C" {

// Batch normalisation of `x` (N×C×…, no affine) with statistics over the rows of every rank
// of `group`, updating the running statistics when given (non-null); returns the output, a
// new tensor whose backward reduces over the ranks too (its graph holds a reference to the
// group), or null with the reason in `err`.
at::Tensor* reprise_sync_batch_norm(void* group, const at::Tensor* x,
                                    const at::Tensor* running_mean,
                                    const at::Tensor* running_var, double momentum, double eps,
                                    char* err, size_t err_len) {
  try {
    TORCH_CHECK(x->dim() >= 2, "sync batch norm takes N×C×… input, not ", x->sizes());
    auto y = SyncBatchNorm::apply(*x, reinterpret_cast<int64_t>(group),
                                  running_mean ? *running_mean : at::Tensor(),
                                  running_var ? *running_var : at::Tensor(), momentum, eps);
    return new at::Tensor(std::move(y));
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return nullptr;
  }
}

}  // extern "C"
