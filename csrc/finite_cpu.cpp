// all_finite: one pass over a list of tensors (the non-finite gradient check of the optimizers).
// x * 0 is 0 for finite x and NaN for inf / NaN, so the loop has no branch and vectorises; the
// sum stays 0 unless an element was not finite.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

namespace sparse_optim {
namespace {

constexpr int64_t kChunk = 1 << 16;

// Independent lanes: vectorised without reassociating a single sum.
template <typename T, typename Acc>
bool chunk_finite(const T* data, int64_t begin, int64_t end) {
  constexpr int64_t kLanes = 16;
  Acc acc[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      acc[l] += static_cast<Acc>(data[i + l]) * Acc(0);
    }
  }
  Acc total = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    total += acc[l];
  }
  for (; i < end; ++i) {
    total += static_cast<Acc>(data[i]) * Acc(0);
  }
  return total == Acc(0);
}

template <typename T>
bool tensor_finite(const at::Tensor& t) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* data = t.const_data_ptr<T>();
  const int64_t n = t.numel();
  if (n <= kChunk) {
    return chunk_finite<T, Acc>(data, 0, n);
  }
  std::atomic<bool> finite{true};
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    if (!chunk_finite<T, Acc>(data, begin, end)) {
      finite.store(false, std::memory_order_relaxed);
    }
  });
  return finite.load();
}

bool one_finite(const at::Tensor& tensor) {
  if (tensor.numel() == 0 || !at::isFloatingType(tensor.scalar_type())) {
    return true;
  }
  const at::Tensor t = tensor.contiguous();
  switch (t.scalar_type()) {
    case at::kFloat:
      return tensor_finite<float>(t);
    case at::kDouble:
      return tensor_finite<double>(t);
    case at::kBFloat16:
      return tensor_finite<c10::BFloat16>(t);
    case at::kHalf:
      return tensor_finite<c10::Half>(t);
    default:
      return at::isfinite(t).all().item<bool>();
  }
}

at::Tensor all_finite_cpu(at::TensorList tensors) {
  bool finite = true;
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "all_finite: expected CPU tensors, got one on ", t.device());
    if (!one_finite(t)) {
      finite = false;
      break;
    }
  }
  return at::scalar_tensor(finite, at::TensorOptions().dtype(at::kBool));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparse_optim, m) {
  m.def("all_finite(Tensor[] tensors) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_optim, CPU, m) {
  m.impl("all_finite", &all_finite_cpu);
}

}  // namespace sparse_optim
