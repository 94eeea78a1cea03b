// Elementwise arithmetic of the gated SGD ops, shared by the CPU and CUDA kernels.
//
// The executable specification is sparse_optim/ops/reference.py. Values are loaded from their
// storage type, computed in opmath T (float for bfloat16 / float16 parameters, else the
// parameter type) and rounded once when stored. Within T, every step rounds where the
// reference's torch ops round: x.add(y, alpha=a) is fma(a, y, x), addcmul(x, y, z, value=v) is
// fma(v * y, z, x), products are rounded. So for float32 / float64 the kernels reproduce the
// reference bit for bit wherever torch's CPU kernels use FMA (AVX2 / AVX-512). This needs the
// compilers not to fuse on their own: g++ -ffp-contract=off, nvcc --fmad=false.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "gates.h"

namespace sparse_optim {

// Hyperparameters of gated_sgd_step_, converted to the opmath type T.
template <typename T>
struct StepScalars {
  T scale;
  T weight_decay;
  T momentum;
  T dampening_complement;  // 1 - dampening
  T trace_decay;
  bool nesterov;
  bool maximize;
};

// a * b + c, rounded once.
template <typename T>
SPARSE_OPTIM_HD T fused_multiply_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Gradient -> SGD direction before momentum: maximize, then weight decay (d.add(p, alpha=wd)).
template <typename T>
SPARSE_OPTIM_HD T decayed_gradient(T g, T p, const StepScalars<T>& s) {
  const T d = s.maximize ? -g : g;
  return s.weight_decay != T(0) ? fused_multiply_add(s.weight_decay, p, d) : d;
}

// buf.mul_(momentum).add_(d, alpha=1 - dampening)
template <typename T>
SPARSE_OPTIM_HD T momentum_buffer(T buf, T d, const StepScalars<T>& s) {
  return fused_multiply_add(s.dampening_complement, d, s.momentum * buf);
}

// nesterov: d.add(buf, alpha=momentum); else buf
template <typename T>
SPARSE_OPTIM_HD T momentum_direction(T d, T buf, const StepScalars<T>& s) {
  return s.nesterov ? fused_multiply_add(s.momentum, buf, d) : buf;
}

// p.addcmul_(gate, d, value=-scale)
template <typename T>
SPARSE_OPTIM_HD T gated_update(T p, T gate_value, T d, T scale) {
  return fused_multiply_add(-scale * gate_value, d, p);
}

// trace.mul_(decay).add_(d)
template <typename T>
SPARSE_OPTIM_HD T trace_update(T trace, T d, T decay) {
  return decay * trace + d;
}

// meta_grad - scale * g * trace * gate'(m): with the true derivative, meta_grad.add_(g * trace *
// gate'(m), alpha=-scale); with the identity, meta_grad.addcmul_(g, trace, value=-scale).
template <typename G, bool kTrueDerivative, typename T>
SPARSE_OPTIM_HD T meta_grad_update(T meta_grad, T g, T trace, T m, T scale) {
  if constexpr (kTrueDerivative && !G::kIdentityDerivative) {
    return fused_multiply_add(-scale, g * trace * G::template derivative<T>(m), meta_grad);
  } else {
    return fused_multiply_add(-scale * g, trace, meta_grad);
  }
}

// Loads and stores between a storage type S and the opmath type T. On the host, bfloat16 goes
// through its bits: g++ does not vectorise loads and stores of the c10::BFloat16 class itself.
template <typename T, typename S>
SPARSE_OPTIM_HD T load(const S* ptr, int64_t i) {
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    return c10::detail::f32_from_bits(ptr[i].x);
  }
#endif
  return static_cast<T>(ptr[i]);
}

template <typename S, typename T>
SPARSE_OPTIM_HD void store(S* ptr, int64_t i, T value) {
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    ptr[i].x = c10::detail::round_to_nearest_even(value);
    return;
  }
#endif
  ptr[i] = static_cast<S>(value);
}

// One element of gated_sgd_step_: parameters / grads / buffers of type P, meta-parameters and
// traces of type M (P or float32). buf and trace are only touched when enabled; a fresh
// momentum buffer is not read, it starts at d.
template <typename G, bool kMomentum, bool kFreshBuffer, bool kTrace, typename P, typename M,
          typename T = at::opmath_type<P>>
SPARSE_OPTIM_HD void gated_step_element(int64_t i, P* param, const P* grad, const M* meta, P* buf,
                                        M* trace, const StepScalars<T>& s) {
  const T p = load<T>(param, i);
  T d = decayed_gradient(load<T>(grad, i), p, s);
  if constexpr (kMomentum) {
    const T b = kFreshBuffer ? d : momentum_buffer(load<T>(buf, i), d, s);
    store(buf, i, b);
    d = momentum_direction(d, b, s);
  }
  if constexpr (kTrace) {
    store(trace, i, trace_update(load<T>(trace, i), d, s.trace_decay));
  }
  store(param, i, gated_update(p, G::template value<T>(load<T>(meta, i)), d, s.scale));
}

// One element of meta_grad_accumulate_: outer gradients of type G, the rest of type M.
// meta_grad may alias meta (online hypergradient steps): meta is read before the store.
template <typename Gate, bool kTrueDerivative, typename G, typename M, typename T = at::opmath_type<G>>
SPARSE_OPTIM_HD void meta_grad_element(int64_t i, M* meta_grad, const G* outer_grad, const M* trace,
                                       const M* meta, T scale) {
  const T m = load<T>(meta, i);
  store(meta_grad, i,
        meta_grad_update<Gate, kTrueDerivative>(load<T>(meta_grad, i), load<T>(outer_grad, i), load<T>(trace, i), m, scale));
}

}  // namespace sparse_optim
