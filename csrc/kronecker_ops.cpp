// sparse_optim::kronecker_update_: params[i] -= lr * U(directions[i]) for many parameters at once,
// with U the Kronecker-factored update of KFO (KLin Eq. 2 / 5, KFC Eq. 6-7, the normalisation of
// appendix A.1.2, the low-rank Cholesky form of appendix A.2.3 Eq. 8). Written with ATen's batched
// GEMMs (BLAS on the CPU, cuBLAS on the GPU), so one implementation serves both devices.
//
// The algorithm, its grouping and its memory layouts ("row" and "column" frames) are those of the
// reference op, sparse_optim/ops/kronecker.py, whose docstring explains them; the specification is
// sparse_optim/functional/kronecker.py. Arguments:
//  - lefts / rights: the factors L_k / R_k of every parameter, parameter-major (lefts[i * depth + k]);
//    for variant 'cholesky' lefts holds the C_k and rights is empty;
//  - biases, scales: empty, or one per parameter (the bias b; the normalisation's scale c).
// U is computed in the dtype of the parameter's first factor and rounded once into the parameter.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <map>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace sparse_optim {
namespace {

constexpr const char* kOp = "sparse_optim::kronecker_update_";

// (B, n, m) of the matrix view of a parameter (functional/kronecker.py: matrix_shape).
struct MatrixShape {
  int64_t batch, rows, cols;
};

MatrixShape matrix_shape(at::IntArrayRef shape) {
  switch (shape.size()) {
    case 0:
      return {1, 1, 1};
    case 1:
      return {1, 1, shape[0]};
    case 2:
      return {1, shape[0], shape[1]};
    default: {
      int64_t rows = 1;
      for (size_t d = 2; d < shape.size(); ++d) {
        rows *= shape[d];
      }
      return {shape[0], rows, shape[1]};
    }
  }
}

at::Tensor to_matrix(const at::Tensor& t) {
  const MatrixShape s = matrix_shape(t.sizes());
  if (t.dim() <= 2) {
    return t.reshape({s.batch, s.rows, s.cols});
  }
  return t.reshape({s.batch, s.cols, s.rows}).transpose(1, 2);
}

at::Tensor from_matrix(const at::Tensor& mat, at::IntArrayRef shape) {
  if (shape.size() <= 2) {
    return mat.reshape(shape);
  }
  return mat.transpose(1, 2).reshape(shape);
}

struct Call {
  at::TensorList params, directions, lefts, rights, biases, scales;
  bool cholesky;
  int64_t depth;
  double eps;

  const at::Tensor& left(size_t i, int64_t k) const { return lefts[i * depth + k]; }
  const at::Tensor& right(size_t i, int64_t k) const { return rights[i * depth + k]; }
  bool has_bias() const { return !biases.empty(); }
  bool normalized() const { return !scales.empty(); }
};

void check_factor(const Call& call, size_t i, const at::Tensor& factor, const char* name,
                  at::IntArrayRef expected) {
  const at::Tensor& first = call.left(i, 0);
  TORCH_CHECK_VALUE(factor.sizes() == expected, kOp, ": ", name, " of parameter ", i, " has shape ", factor.sizes(),
                    ", expected ", expected, " for a parameter of shape ", call.params[i].sizes());
  TORCH_CHECK_VALUE(factor.scalar_type() == first.scalar_type() && factor.device() == first.device(), kOp, ": ",
                    name, " of parameter ", i, " is ", factor.scalar_type(), " on ", factor.device(),
                    ", unlike the first factor (", first.scalar_type(), " on ", first.device(), ")");
}

void check_call(const Call& call) {
  const size_t count = call.params.size();
  TORCH_CHECK_VALUE(call.depth >= 1, kOp, ": depth must be positive, got ", call.depth);
  TORCH_CHECK_VALUE(call.directions.size() == count, kOp, ": ", count, " params but ", call.directions.size(),
                    " directions");
  TORCH_CHECK_VALUE(call.lefts.size() == count * call.depth, kOp, ": lefts needs depth * len(params) = ",
                    count * call.depth, " factors, got ", call.lefts.size());
  TORCH_CHECK_VALUE(call.rights.size() == (call.cholesky ? 0 : count * call.depth), kOp, ": rights needs ",
                    call.cholesky ? 0 : count * call.depth, " factors, got ", call.rights.size());
  TORCH_CHECK_VALUE(call.biases.empty() || call.biases.size() == count, kOp,
                    ": biases must be empty or hold one tensor per parameter");
  TORCH_CHECK_VALUE(call.scales.empty() || call.scales.size() == count, kOp,
                    ": scales must be empty or hold one tensor per parameter");
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& p = call.params[i];
    TORCH_CHECK_VALUE(call.directions[i].sizes() == p.sizes(), kOp, ": direction ", i, " has shape ",
                      call.directions[i].sizes(), ", expected the parameter's ", p.sizes());
    TORCH_CHECK_VALUE(call.left(i, 0).device() == p.device() && call.directions[i].device() == p.device(), kOp,
                      ": parameter ", i, ", its direction and its factors must be on one device");
    TORCH_CHECK_VALUE(call.left(i, 0).is_floating_point(), kOp, ": factors must be floating point, got ",
                      call.left(i, 0).scalar_type());
    const MatrixShape s = matrix_shape(p.sizes());
    for (int64_t k = 0; k < call.depth; ++k) {
      if (call.cholesky) {
        const at::Tensor& c = call.left(i, k);
        TORCH_CHECK_VALUE(c.dim() == 2, kOp, ": Cholesky factor C", k, " of parameter ", i, " must be 2-d");
        check_factor(call, i, c, "factor C", {p.numel(), c.size(1)});
      } else {
        check_factor(call, i, call.left(i, k), "factor L", {s.rows, s.rows});
        check_factor(call, i, call.right(i, k), "factor R", {s.cols, s.cols});
      }
    }
    if (call.has_bias()) {
      check_factor(call, i, call.biases[i], "bias", p.sizes());
    }
    if (call.normalized()) {
      check_factor(call, i, call.scales[i], "scale", {});
    }
  }
}

// Parameters that share batched GEMMs: same matrix view (Kronecker) or numel and ranks (Cholesky),
// same factor dtype and device. An ordered map keeps the order of the GEMMs deterministic.
std::map<std::vector<int64_t>, std::vector<size_t>> groups(const Call& call) {
  std::map<std::vector<int64_t>, std::vector<size_t>> out;
  for (size_t i = 0; i < call.params.size(); ++i) {
    const at::Tensor& first = call.left(i, 0);
    std::vector<int64_t> key{static_cast<int64_t>(first.scalar_type()), static_cast<int64_t>(first.device().type()),
                             first.device().index()};
    if (call.cholesky) {
      key.push_back(call.params[i].numel());
      for (int64_t k = 0; k < call.depth; ++k) {
        key.push_back(call.left(i, k).size(1));
      }
    } else {
      const MatrixShape s = matrix_shape(call.params[i].sizes());
      key.insert(key.end(), {s.batch, s.rows, s.cols});
    }
    out[key].push_back(i);
  }
  return out;
}

// A new buffer holding `tensors` (one shape, any layout) along dim 0, in the dtype `dtype`.
at::Tensor stack_copy(const std::vector<at::Tensor>& tensors, at::ScalarType dtype) {
  return at::stack(tensors).to(dtype);
}

at::Tensor stack_factors(const std::vector<at::Tensor>& factors) {
  return factors.size() == 1 ? factors.front().unsqueeze(0) : at::stack(factors);
}

template <typename F>
std::vector<at::Tensor> collect(const std::vector<size_t>& members, F&& f) {
  std::vector<at::Tensor> out;
  out.reserve(members.size());
  for (size_t i : members) {
    out.push_back(f(i));
  }
  return out;
}

// A group's directions along dim 0, in the dtype `dtype`: a lone parameter's view is used as it is
// (the GEMMs read any strides), several are stacked. Read only.
at::Tensor load(const std::vector<at::Tensor>& views, at::ScalarType dtype) {
  return views.size() == 1 ? views.front().unsqueeze(0).to(dtype) : stack_copy(views, dtype);
}

// KFO A.1.2: each parameter's slice of h divided by its norm max(||d||, eps), and c * max(||d||, eps),
// shaped to multiply the result.
std::pair<at::Tensor, at::Tensor> normalize(const at::Tensor& h, const Call& call,
                                            const std::vector<size_t>& members) {
  const int64_t per_parameter = 1;
  const at::Tensor norms = at::linalg_vector_norm(h.flatten(1), 2, at::IntArrayRef(per_parameter)).clamp_min(call.eps);
  std::vector<int64_t> shape(h.dim(), 1);
  shape[0] = -1;
  const at::Tensor scales = stack_factors(collect(members, [&](size_t i) { return call.scales[i].reshape({}); }));
  return {h.div(norms.view(shape)), scales.to(h.scalar_type()).mul(norms).view(shape)};
}

// x @ y batched, or initial + x @ y written into `initial`.
at::Tensor gemm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& initial) {
  if (!initial.defined()) {
    return at::bmm(x, y);
  }
  return initial.view({x.size(0), x.size(1), y.size(2)}).baddbmm_(x, y);
}

// A group's (B, n, m) matrix views in the row frame, (n, B, m), or the column frame, (m, B, n).
struct KroneckerFrame {
  bool row;
  std::vector<int64_t> order, inverse;  // (B, n, m) -> frame layout -> (B, n, m)

  explicit KroneckerFrame(at::IntArrayRef shape) : row(matrix_shape(shape).rows <= matrix_shape(shape).cols) {
    order = row ? std::vector<int64_t>{1, 0, 2} : std::vector<int64_t>{2, 0, 1};
    inverse = row ? std::vector<int64_t>{1, 0, 2} : std::vector<int64_t>{1, 2, 0};
  }
  at::Tensor load(const at::Tensor& t) const { return to_matrix(t).permute(order); }
  at::Tensor unload(const at::Tensor& u, at::IntArrayRef shape) const { return from_matrix(u.permute(inverse), shape); }

  // L_k H R_k (+ b), KFO Eq. 5: row frame (L H) R, column frame (R^T H^T) L^T; h of shape
  // (P, a, B, c), each product one GEMM per parameter.
  at::Tensor layer(const at::Tensor& h, const Call& call, const std::vector<size_t>& members, int64_t k,
                   const at::Tensor& bias) const {
    const at::Tensor left = stack_factors(collect(members, [&](size_t i) { return call.left(i, k); }));
    const at::Tensor right = stack_factors(collect(members, [&](size_t i) { return call.right(i, k); }));
    const int64_t p = h.size(0), a = h.size(1), b = h.size(2), c = h.size(3);
    // reshape: a view where h's strides allow (BLAS reads them)
    const at::Tensor half = at::bmm(row ? left : right.mT(), h.reshape({p, a, b * c}));
    return gemm(half.view({p, a * b, c}), row ? right : left.mT(), bias).view({p, a, b, c});
  }
};

// A group's flattened directions as row vectors g, (1, numel).
struct CholeskyFrame {
  at::Tensor load(const at::Tensor& t) const { return t.reshape({1, -1}); }
  at::Tensor unload(const at::Tensor& u, at::IntArrayRef shape) const { return u.view(shape); }

  // C_k (C_k^T g) (+ b), KFO Eq. 8, as (g C) C^T: both GEMVs have one output row.
  at::Tensor layer(const at::Tensor& h, const Call& call, const std::vector<size_t>& members, int64_t k,
                   const at::Tensor& bias) const {
    const at::Tensor c = stack_factors(collect(members, [&](size_t i) { return call.left(i, k); }));
    return gemm(at::bmm(h, c), c.mT(), bias);
  }
};

// U(d) of one group (KFO Eq. 5 / 7 / 8 and A.1.2), as views of one buffer in the parameters' shapes:
// load, normalise, layers with ReLU between them, the bias added by the last GEMM, the scale.
template <typename Frame>
std::vector<at::Tensor> group_updates(const Frame& frame, const Call& call, const std::vector<size_t>& members) {
  const at::ScalarType dtype = call.left(members.front(), 0).scalar_type();
  at::Tensor h = load(collect(members, [&](size_t i) { return frame.load(call.directions[i]); }), dtype);
  at::Tensor coef;
  if (call.normalized()) {
    std::tie(h, coef) = normalize(h, call, members);
  }
  for (int64_t k = 0; k < call.depth; ++k) {
    if (k > 0) {
      h.relu_();
    }
    at::Tensor bias;
    if (k == call.depth - 1 && call.has_bias()) {
      bias = stack_copy(collect(members, [&](size_t i) { return frame.load(call.biases[i]); }), dtype);
    }
    h = frame.layer(h, call, members, k, bias);
  }
  if (coef.defined()) {
    h.mul_(coef);
  }
  std::vector<at::Tensor> updates;
  for (size_t j = 0; j < members.size(); ++j) {
    updates.push_back(frame.unload(h.select(0, static_cast<int64_t>(j)), call.params[members[j]].sizes()));
  }
  return updates;
}

void kronecker_update_op(at::TensorList params, at::TensorList directions, at::TensorList lefts,
                         at::TensorList rights, at::TensorList biases, at::TensorList scales,
                         std::string_view variant, int64_t depth, double lr, double eps) {
  TORCH_CHECK_VALUE(variant == "kronecker" || variant == "cholesky", kOp,
                    ": variant must be 'kronecker' or 'cholesky', got '", variant, "'");
  const Call call{params, directions, lefts, rights, biases, scales, variant == "cholesky", depth, eps};
  check_call(call);
  std::vector<at::Tensor> targets, updates;
  for (const auto& entry : groups(call)) {
    const std::vector<size_t>& members = entry.second;
    const std::vector<at::Tensor> group =
        call.cholesky ? group_updates(CholeskyFrame{}, call, members)
                      : group_updates(KroneckerFrame(call.params[members.front()].sizes()), call, members);
    updates.insert(updates.end(), group.begin(), group.end());
    for (size_t i : members) {
      targets.push_back(params[i]);
    }
  }
  if (!targets.empty()) {
    at::_foreach_add_(targets, updates, -lr);  // in U's precision, one rounding into each parameter
  }
}

// Autograd kernel: like the reference op (which writes under torch.no_grad) it records no graph;
// as an in-place op it bumps the version counters of the parameters it writes.
void kronecker_update_autograd(at::TensorList params, at::TensorList directions, at::TensorList lefts,
                               at::TensorList rights, at::TensorList biases, at::TensorList scales,
                               std::string_view variant, int64_t depth, double lr, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparse_optim::kronecker_update_", "")
                             .typed<decltype(kronecker_update_autograd)>();
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.call(params, directions, lefts, rights, biases, scales, variant, depth, lr, eps);
  }
  for (const at::Tensor& p : params) {
    torch::autograd::impl::bump_version(p);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparse_optim, m) {
  m.def(
      "kronecker_update_(Tensor(a!)[] params, Tensor[] directions, Tensor[] lefts, Tensor[] rights, "
      "Tensor[] biases, Tensor[] scales, str variant, int depth, float lr, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(sparse_optim, CPU, m) {
  m.impl("kronecker_update_", &kronecker_update_op);
}

TORCH_LIBRARY_IMPL(sparse_optim, CUDA, m) {
  m.impl("kronecker_update_", &kronecker_update_op);
}

TORCH_LIBRARY_IMPL(sparse_optim, Autograd, m) {
  m.impl("kronecker_update_", &kronecker_update_autograd);
}

}  // namespace sparse_optim
