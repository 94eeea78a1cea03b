// Validated calls of the gated SGD ops, shared by the CPU and CUDA implementations (host code).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <string_view>
#include <vector>

#include "flat_operands.h"
#include "gated_math.h"

namespace sparse_optim {

// Positions of the lists in the FlatOperands of each op.
namespace step_list {
constexpr size_t params = 0, grads = 1, metas = 2, momentum_buffers = 3, traces = 4, count = 5;
}
namespace meta_grad_list {
constexpr size_t meta_grads = 0, outer_grads = 1, traces = 2, metas = 3, count = 4;
}

struct GatedStepCall {
  FlatOperands operands;
  GateId kind;
  bool momentum;                    // momentum != 0: buffers are read and written
  std::vector<bool> fresh_buffers;  // per index, with momentum: the buffer starts at d
  StepScalars<double> scalars;
  at::ScalarType param_type;
  at::ScalarType meta_type;
};

struct MetaGradCall {
  FlatOperands operands;
  GateId kind;
  bool true_derivative;  // gate'(m) instead of the straight-through identity
  double scale;
  at::ScalarType grad_type;
  at::ScalarType meta_type;
};

GatedStepCall prepare_gated_step(at::TensorList params, at::TensorList grads, at::TensorList metas,
                                 at::TensorList momentum_buffers, at::TensorList traces,
                                 const c10::List<bool>& fresh_buffers, std::string_view kind, double scale,
                                 double weight_decay, double momentum, double dampening, bool nesterov,
                                 bool maximize, double trace_decay);

MetaGradCall prepare_meta_grad(at::TensorList meta_grads, at::TensorList outer_grads, at::TensorList traces,
                               at::TensorList metas, std::string_view kind, double scale,
                               bool straight_through);

template <typename T>
StepScalars<T> cast_scalars(const StepScalars<double>& s) {
  return {static_cast<T>(s.scale),       static_cast<T>(s.weight_decay), static_cast<T>(s.momentum),
          static_cast<T>(s.dampening_complement), static_cast<T>(s.trace_decay), s.nesterov, s.maximize};
}

// The operator implementations for one device: validate, run the device's kernels, copy back.
template <void (*kRunStep)(const GatedStepCall&)>
void gated_sgd_step_op(at::TensorList params, at::TensorList grads, at::TensorList metas,
                       at::TensorList momentum_buffers, at::TensorList traces, const c10::List<bool>& fresh_buffers,
                       std::string_view kind, double scale, double weight_decay, double momentum, double dampening,
                       bool nesterov, bool maximize, double trace_decay) {
  const GatedStepCall call = prepare_gated_step(params, grads, metas, momentum_buffers, traces, fresh_buffers, kind,
                                                scale, weight_decay, momentum, dampening, nesterov, maximize,
                                                trace_decay);
  kRunStep(call);
  call.operands.copy_back();
}

template <void (*kRunMetaGrad)(const MetaGradCall&)>
void meta_grad_accumulate_op(at::TensorList meta_grads, at::TensorList outer_grads, at::TensorList traces,
                             at::TensorList metas, std::string_view kind, double scale, bool straight_through) {
  const MetaGradCall call = prepare_meta_grad(meta_grads, outer_grads, traces, metas, kind, scale, straight_through);
  kRunMetaGrad(call);
  call.operands.copy_back();
}

}  // namespace sparse_optim
