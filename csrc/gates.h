// The gate kinds of the elementwise ops: one trait per kind of sparse_optim/functional/gates.py
// (same name, same formulas). Adding a kind: a trait here and its name in SPARSE_OPTIM_GATES.
#pragma once

#include <c10/util/Exception.h>

#include <string_view>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SPARSE_OPTIM_HD __host__ __device__ __forceinline__
#else
#define SPARSE_OPTIM_HD inline
#endif

namespace sparse_optim {

// value(m): the gate; derivative(m): its true derivative, used unless straight-through;
// kIdentityDerivative: the derivative is 1 (or the kind has none and is always straight-through).
// Indicators are converted, not branched on, so CPU loops stay vectorisable.
struct StepGate {  // 1[m >= 0], sparse-MAML Eq. 4; straight-through only
  static constexpr std::string_view name = "step";
  static constexpr bool kIdentityDerivative = true;
  template <typename T>
  SPARSE_OPTIM_HD static T value(T m) {
    return static_cast<T>(m >= T(0));
  }
  template <typename T>
  SPARSE_OPTIM_HD static T derivative(T) {
    return T(1);
  }
};

struct ReluGate {  // max(0, m) (NaN propagates as in clamp_min), sparse-ReLU-MAML / La-MAML Eq. 7
  static constexpr std::string_view name = "relu";
  static constexpr bool kIdentityDerivative = false;
  template <typename T>
  SPARSE_OPTIM_HD static T value(T m) {
    return m < T(0) ? T(0) : m;
  }
  template <typename T>
  SPARSE_OPTIM_HD static T derivative(T m) {
    return static_cast<T>(m > T(0));
  }
};

struct LinearGate {  // m, Meta-SGD
  static constexpr std::string_view name = "linear";
  static constexpr bool kIdentityDerivative = true;
  template <typename T>
  SPARSE_OPTIM_HD static T value(T m) {
    return m;
  }
  template <typename T>
  SPARSE_OPTIM_HD static T derivative(T) {
    return T(1);
  }
};

#define SPARSE_OPTIM_GATES(X) X(StepGate) X(ReluGate) X(LinearGate)

enum class GateId {
#define SPARSE_OPTIM_GATE_ID(G) G,
  SPARSE_OPTIM_GATES(SPARSE_OPTIM_GATE_ID)
#undef SPARSE_OPTIM_GATE_ID
};

// The kind named `kind`; ValueError for an unknown name.
inline GateId parse_gate(const char* op, std::string_view kind) {
#define SPARSE_OPTIM_GATE_PARSE(G) \
  if (kind == G::name) {           \
    return GateId::G;              \
  }
  SPARSE_OPTIM_GATES(SPARSE_OPTIM_GATE_PARSE)
#undef SPARSE_OPTIM_GATE_PARSE
  TORCH_CHECK_VALUE(false, op, ": unknown gate kind '", kind, "'");
}

// Calls f(G{}) with the trait of `id` (host code).
template <typename F>
void dispatch_gate(GateId id, F&& f) {
  switch (id) {
#define SPARSE_OPTIM_GATE_CASE(G) \
  case GateId::G:                 \
    return f(G{});
    SPARSE_OPTIM_GATES(SPARSE_OPTIM_GATE_CASE)
#undef SPARSE_OPTIM_GATE_CASE
  }
}

}  // namespace sparse_optim
