// Compile-time dispatch of the kernels on dtypes and flags (host code).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "gated_math.h"

namespace sparse_optim {

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename P, bool kFloatMetaAllowed, typename F>
void with_meta_type(const char* op, at::ScalarType meta, F&& f) {
  if (meta == c10::CppTypeToScalarType<P>::value) {
    f(TypeTag<P>{}, TypeTag<P>{});
    return;
  }
  if constexpr (kFloatMetaAllowed) {
    if (meta == at::kFloat) {
      f(TypeTag<P>{}, TypeTag<float>{});
      return;
    }
  }
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for ", c10::CppTypeToScalarType<P>::value,
                              " parameters with ", meta, " meta-parameters");
}

// Calls f(TypeTag<P>, TypeTag<M>) for the supported pairs of parameter dtype P and
// meta-parameter dtype M: M == P, or M == float32 with bfloat16 / float16 P. Other pairs
// raise NotImplementedError (the Python wrappers then use the reference ops).
template <typename F>
void dispatch_param_meta_types(const char* op, at::ScalarType param, at::ScalarType meta, F&& f) {
  switch (param) {
    case at::kFloat:
      return with_meta_type<float, false>(op, meta, f);
    case at::kDouble:
      return with_meta_type<double, false>(op, meta, f);
    case at::kBFloat16:
      return with_meta_type<c10::BFloat16, true>(op, meta, f);
    case at::kHalf:
      return with_meta_type<c10::Half, true>(op, meta, f);
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for parameters of dtype ", param);
  }
}

template <typename F>
void dispatch_bool(bool value, F&& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace sparse_optim
