// Schemas of the sparse_optim operators and their device-independent Autograd kernels; the CPU
// and CUDA kernels register themselves in gated_cpu.cpp and gated_cuda.cu.
//
// Semantics: sparse_optim/ops/reference.py, with
//  - gated_sgd_step_: momentum_buffers / fresh_buffers are read only when momentum != 0 (one
//    entry per parameter; a fresh buffer is overwritten with the direction d); traces may be
//    empty (no trace); kind names a gate of csrc/gates.h (unknown kinds raise ValueError);
//  - meta_grad_accumulate_: meta_grads += -scale * outer_grads * traces * gate'(metas), gate' := 1 if
//    straight_through.
// Dtype pairs without a kernel raise NotImplementedError.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "gated_ops.h"

namespace sparse_optim {
namespace {

void bump_versions(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    torch::autograd::impl::bump_version(t);
  }
}

// Autograd kernels. Like the reference ops (which write under torch.no_grad) the ops record no
// graph; as in-place ops they bump the version counters of the tensors they write, so autograd
// still detects a saved tensor that was modified.
void gated_sgd_step_autograd(at::TensorList params, at::TensorList grads, at::TensorList metas,
                             at::TensorList momentum_buffers, at::TensorList traces,
                             const c10::List<bool>& fresh_buffers, std::string_view kind, double scale,
                             double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
                             double trace_decay) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparse_optim::gated_sgd_step_", "")
                             .typed<decltype(gated_sgd_step_autograd)>();
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.call(params, grads, metas, momentum_buffers, traces, fresh_buffers, kind, scale, weight_decay, momentum,
            dampening, nesterov, maximize, trace_decay);
  }
  bump_versions(params);
  if (momentum != 0) {
    bump_versions(momentum_buffers);
  }
  bump_versions(traces);
}

void meta_grad_accumulate_autograd(at::TensorList meta_grads, at::TensorList outer_grads, at::TensorList traces,
                                   at::TensorList metas, std::string_view kind, double scale,
                                   bool straight_through) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparse_optim::meta_grad_accumulate_", "")
                             .typed<decltype(meta_grad_accumulate_autograd)>();
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.call(meta_grads, outer_grads, traces, metas, kind, scale, straight_through);
  }
  bump_versions(meta_grads);
}

}  // namespace

TORCH_LIBRARY(sparse_optim, m) {
  m.def(
      "gated_sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[] metas, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] traces, bool[] fresh_buffers, str kind, float scale, float weight_decay, float momentum, "
      "float dampening, bool nesterov, bool maximize, float trace_decay) -> ()");
  m.def(
      "meta_grad_accumulate_(Tensor(a!)[] meta_grads, Tensor[] outer_grads, Tensor[] traces, Tensor[] metas, "
      "str kind, float scale, bool straight_through) -> ()");
}

TORCH_LIBRARY_IMPL(sparse_optim, Autograd, m) {
  m.impl("gated_sgd_step_", &gated_sgd_step_autograd);
  m.impl("meta_grad_accumulate_", &meta_grad_accumulate_autograd);
}

}  // namespace sparse_optim
