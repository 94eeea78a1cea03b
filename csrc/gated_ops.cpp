#include "gated_ops.h"

#include <c10/util/Exception.h>

namespace sparse_optim {
namespace {

// All tensors of a list have one dtype; a mixed list raises NotImplementedError so that the
// Python wrapper falls back to the reference ops, which accept it.
at::ScalarType list_dtype(const char* op, const char* name, at::TensorList list, at::ScalarType expected) {
  for (const at::Tensor& t : list) {
    TORCH_CHECK_NOT_IMPLEMENTED(t.scalar_type() == expected, op, ": ", name, " mixes dtypes ", t.scalar_type(),
                                " and ", expected);
  }
  return expected;
}

}  // namespace

GatedStepCall prepare_gated_step(at::TensorList params, at::TensorList grads, at::TensorList metas,
                                 at::TensorList momentum_buffers, at::TensorList traces,
                                 const c10::List<bool>& fresh_buffers, std::string_view kind, double scale,
                                 double weight_decay, double momentum, double dampening, bool nesterov,
                                 bool maximize, double trace_decay) {
  constexpr const char* op = "sparse_optim::gated_sgd_step_";
  const bool has_momentum = momentum != 0 && !params.empty();
  TORCH_CHECK(!has_momentum || (momentum_buffers.size() == params.size() && fresh_buffers.size() == params.size()),
              op, ": with momentum, momentum_buffers and fresh_buffers need one entry per parameter");
  TORCH_CHECK(grads.size() == params.size() && metas.size() == params.size(), op,
              ": params, grads and metas must have the same length");
  const GateId gate_kind = parse_gate(op, kind);
  at::ScalarType param_type = at::kFloat, meta_type = at::kFloat;
  if (!params.empty()) {
    param_type = list_dtype(op, "params", params, params.front().scalar_type());
    meta_type = list_dtype(op, "metas", metas, metas.front().scalar_type());
    list_dtype(op, "grads", grads, param_type);
    list_dtype(op, "traces", traces, meta_type);
    if (has_momentum) {
      list_dtype(op, "momentum_buffers", momentum_buffers, param_type);
    }
  }
  const at::TensorList no_list;
  FlatOperands operands(op, {{"params", params, true},
                             {"grads", grads, false},
                             {"metas", metas, false},
                             {"momentum_buffers", has_momentum ? momentum_buffers : no_list, true},
                             {"traces", traces, true}});
  std::vector<bool> fresh;
  if (has_momentum) {
    fresh.assign(fresh_buffers.begin(), fresh_buffers.end());
  }
  const StepScalars<double> scalars{scale, weight_decay, momentum, 1.0 - dampening, trace_decay, nesterov, maximize};
  return {std::move(operands), gate_kind, has_momentum, std::move(fresh), scalars, param_type, meta_type};
}

MetaGradCall prepare_meta_grad(at::TensorList meta_grads, at::TensorList outer_grads, at::TensorList traces,
                               at::TensorList metas, std::string_view kind, double scale,
                               bool straight_through) {
  constexpr const char* op = "sparse_optim::meta_grad_accumulate_";
  const GateId gate_kind = parse_gate(op, kind);
  TORCH_CHECK(outer_grads.size() == meta_grads.size() && traces.size() == meta_grads.size() &&
                  metas.size() == meta_grads.size(),
              op, ": meta_grads, outer_grads, traces and metas must have the same length");
  at::ScalarType grad_type = at::kFloat, meta_type = at::kFloat;
  if (!meta_grads.empty()) {
    grad_type = list_dtype(op, "outer_grads", outer_grads, outer_grads.front().scalar_type());
    meta_type = list_dtype(op, "meta_grads", meta_grads, meta_grads.front().scalar_type());
    list_dtype(op, "traces", traces, meta_type);
    list_dtype(op, "metas", metas, meta_type);
  }
  FlatOperands operands(op, {{"meta_grads", meta_grads, true},
                             {"outer_grads", outer_grads, false},
                             {"traces", traces, false},
                             {"metas", metas, false}});
  return {std::move(operands), gate_kind, !straight_through, scale, grad_type, meta_type};
}

}  // namespace sparse_optim
