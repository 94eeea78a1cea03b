// CPU kernels: one pass over memory per tensor, all tensors of a call split into tasks that
// at::parallel_for spreads over the intra-op threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "gated_math.h"
#include "gated_ops.h"

namespace sparse_optim {
namespace {

constexpr int64_t kTaskElements = 1 << 15;
// Calls touching fewer elements run on the calling thread: waking the pool costs more.
constexpr int64_t kParallelElements = 1 << 16;

struct Task {
  int64_t index;
  int64_t begin;
  int64_t end;
};

template <typename Body>
void for_each_task(const FlatOperands& operands, const Body& body) {
  std::vector<Task> tasks;
  int64_t total = 0;
  for (int64_t i = 0; i < operands.size(); ++i) {
    const int64_t n = operands.numel(i);
    total += n;
    for (int64_t begin = 0; begin < n; begin += kTaskElements) {
      tasks.push_back({i, begin, std::min(n, begin + kTaskElements)});
    }
  }
  const int64_t count = static_cast<int64_t>(tasks.size());
  const int64_t grain = total < kParallelElements ? count : 1;
  at::parallel_for(0, count, grain, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      body(tasks[t]);
    }
  });
}

// Plain loops over raw pointers, vectorised by the compiler. `omp simd` states that iterations
// are independent: the lists may alias only element for element (meta_grads and metas do in
// online hypergradient steps), where each iteration reads before it writes. With g++ on x86-64
// the loops are also compiled for x86-64-v3 (AVX2, FMA), picked at load time where the CPU has
// it; the baseline build calls fma() from libm. (AVX-512 clones measured ~15% slower: these
// loops are memory-bound.)
// target_clones("arch=...") needs GCC >= 12; older GCC and clang build the baseline loops only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define SPARSE_OPTIM_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SPARSE_OPTIM_VECTOR_CLONES
#endif

template <typename Gate, bool kMomentum, bool kFreshBuffer, bool kTrace, typename P, typename M, typename T>
SPARSE_OPTIM_VECTOR_CLONES void gated_step_loop(P* param, const P* grad, const M* meta, P* buf, M* trace,
                                                const StepScalars<T> s, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    gated_step_element<Gate, kMomentum, kFreshBuffer, kTrace>(i, param, grad, meta, buf, trace, s);
  }
}

template <typename Gate, bool kTrueDerivative, typename G, typename M, typename T>
SPARSE_OPTIM_VECTOR_CLONES void meta_grad_loop(M* meta_grad, const G* outer_grad, const M* trace, const M* meta,
                                               const T scale, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    meta_grad_element<Gate, kTrueDerivative>(i, meta_grad, outer_grad, trace, meta, scale);
  }
}

void run_gated_step(const GatedStepCall& call) {
  namespace L = step_list;
  const FlatOperands& ops = call.operands;
  const auto dispatch = [&](auto p_tag, auto m_tag) {
    using P = typename decltype(p_tag)::type;
    using M = typename decltype(m_tag)::type;
    const auto s = cast_scalars<at::opmath_type<P>>(call.scalars);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.momentum, [&](auto momentum) {
        dispatch_bool(ops.has(L::traces), [&](auto trace) {
          using Gate = decltype(gate);
          constexpr bool kMomentum = decltype(momentum)::value, kTrace = decltype(trace)::value;
          for_each_task(ops, [&](const Task& task) {
            const int64_t i = task.index;
            auto* param = static_cast<P*>(ops.data(L::params, i));
            const auto* grad = static_cast<const P*>(ops.data(L::grads, i));
            const auto* meta = static_cast<const M*>(ops.data(L::metas, i));
            auto* buf = static_cast<P*>(ops.data(L::momentum_buffers, i));
            auto* trace_data = static_cast<M*>(ops.data(L::traces, i));
            const auto loop = [&](auto fresh_buffer) {
              gated_step_loop<Gate, kMomentum, decltype(fresh_buffer)::value, kTrace>(param, grad, meta, buf,
                                                                                       trace_data, s, task.begin,
                                                                                       task.end);
            };
            if constexpr (kMomentum) {
              if (call.fresh_buffers[i]) {
                return loop(std::true_type{});
              }
            }
            loop(std::false_type{});
          });
        });
      });
    });
  };
  dispatch_param_meta_types("sparse_optim::gated_sgd_step_", call.param_type, call.meta_type, dispatch);
}

void run_meta_grad(const MetaGradCall& call) {
  namespace L = meta_grad_list;
  const FlatOperands& ops = call.operands;
  const auto dispatch = [&](auto g_tag, auto m_tag) {
    using G = typename decltype(g_tag)::type;
    using M = typename decltype(m_tag)::type;
    const auto scale = static_cast<at::opmath_type<G>>(call.scale);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.true_derivative, [&](auto true_derivative) {
      for_each_task(ops, [&](const Task& task) {
        const int64_t i = task.index;
        meta_grad_loop<decltype(gate), decltype(true_derivative)::value>(
            static_cast<M*>(ops.data(L::meta_grads, i)), static_cast<const G*>(ops.data(L::outer_grads, i)),
            static_cast<const M*>(ops.data(L::traces, i)), static_cast<const M*>(ops.data(L::metas, i)), scale,
            task.begin, task.end);
      });
      });
    });
  };
  dispatch_param_meta_types("sparse_optim::meta_grad_accumulate_", call.grad_type, call.meta_type, dispatch);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_optim, CPU, m) {
  m.impl("gated_sgd_step_", &gated_sgd_step_op<run_gated_step>);
  m.impl("meta_grad_accumulate_", &meta_grad_accumulate_op<run_meta_grad>);
}

}  // namespace sparse_optim
