// CUDA kernels: multi-tensor launches. The host packs the data pointers of up to kMaxTensors
// tensors and the (tensor, chunk) pair of up to kMaxBlocks thread blocks into one kernel
// argument; each block walks one chunk of kChunkElements elements of one tensor.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dispatch.h"
#include "gated_math.h"
#include "gated_ops.h"

namespace sparse_optim {
namespace {

constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int kBlockThreads = 512;
constexpr int64_t kChunkElements = 1 << 16;

// Kernel argument (kept well under the 4 KiB parameter limit): the lists' data pointers, the
// tensors' sizes and a per-tensor flag (gated_sgd_step_: the momentum buffer is fresh), and
// which tensor and chunk every block handles.
template <int kLists>
struct ChunkTable {
  void* data[kLists][kMaxTensors];
  int64_t numel[kMaxTensors];
  bool flag[kMaxTensors];
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

// The element range [begin, end) of this block's chunk, and its tensor's slot in the table.
template <int kLists>
struct BlockRange {
  int tensor;
  int64_t begin;
  int64_t end;

  __device__ explicit BlockRange(const ChunkTable<kLists>& table)
      : tensor(table.block_tensor[blockIdx.x]),
        begin(static_cast<int64_t>(table.block_chunk[blockIdx.x]) * kChunkElements),
        end(min(table.numel[tensor], begin + kChunkElements)) {}
};

// Calls launch(table, blocks) for consecutive groups of chunks covering every tensor of
// `operands` (lists [0, kLists)); flags[i] is tensor i's flag (false if flags is empty).
template <int kLists, typename Launch>
void for_each_chunk_table(const FlatOperands& operands, const std::vector<bool>& flags, const Launch& launch) {
  ChunkTable<kLists> table{};
  int tensors = 0;
  int blocks = 0;
  for (int64_t i = 0; i < operands.size(); ++i) {
    const int64_t n = operands.numel(i);
    if (n == 0) {
      continue;
    }
    if (tensors == kMaxTensors) {
      launch(table, blocks);
      tensors = blocks = 0;
    }
    int slot = tensors++;
    for (int list = 0; list < kLists; ++list) {
      table.data[list][slot] = operands.data(list, i);
    }
    table.numel[slot] = n;
    table.flag[slot] = !flags.empty() && flags[i];
    const int64_t chunks = (n + kChunkElements - 1) / kChunkElements;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      if (blocks == kMaxBlocks) {
        launch(table, blocks);
        blocks = 0;
        // Only this tensor has chunks left: it moves to slot 0 of the next table.
        for (int list = 0; list < kLists; ++list) {
          table.data[list][0] = table.data[list][slot];
        }
        table.numel[0] = table.numel[slot];
        table.flag[0] = table.flag[slot];
        slot = 0;
        tensors = 1;
      }
      table.block_tensor[blocks] = static_cast<uint8_t>(slot);
      table.block_chunk[blocks] = static_cast<int32_t>(chunk);
      ++blocks;
    }
  }
  if (blocks > 0) {
    launch(table, blocks);
  }
}

template <typename Gate, bool kMomentum, bool kFreshBuffer, bool kTrace, typename P, typename M, typename T>
__device__ void gated_step_chunk(const ChunkTable<step_list::count>& table, const BlockRange<step_list::count>& r,
                                 const StepScalars<T>& s) {
  namespace L = step_list;
  auto* param = static_cast<P*>(table.data[L::params][r.tensor]);
  const auto* grad = static_cast<const P*>(table.data[L::grads][r.tensor]);
  const auto* meta = static_cast<const M*>(table.data[L::metas][r.tensor]);
  auto* buf = static_cast<P*>(table.data[L::momentum_buffers][r.tensor]);
  auto* trace = static_cast<M*>(table.data[L::traces][r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    gated_step_element<Gate, kMomentum, kFreshBuffer, kTrace>(i, param, grad, meta, buf, trace, s);
  }
}

template <typename Gate, bool kMomentum, bool kTrace, typename P, typename M, typename T>
__global__ void gated_step_kernel(const ChunkTable<step_list::count> table, const StepScalars<T> s) {
  const BlockRange<step_list::count> r(table);
  if constexpr (kMomentum) {
    if (table.flag[r.tensor]) {  // a fresh momentum buffer
      return gated_step_chunk<Gate, kMomentum, true, kTrace, P, M>(table, r, s);
    }
  }
  gated_step_chunk<Gate, kMomentum, false, kTrace, P, M>(table, r, s);
}

template <typename Gate, bool kTrueDerivative, typename G, typename M, typename T>
__global__ void meta_grad_kernel(const ChunkTable<meta_grad_list::count> table, const T scale) {
  namespace L = meta_grad_list;
  const BlockRange<L::count> r(table);
  auto* meta_grad = static_cast<M*>(table.data[L::meta_grads][r.tensor]);
  const auto* outer_grad = static_cast<const G*>(table.data[L::outer_grads][r.tensor]);
  const auto* trace = static_cast<const M*>(table.data[L::traces][r.tensor]);
  const auto* meta = static_cast<const M*>(table.data[L::metas][r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    meta_grad_element<Gate, kTrueDerivative>(i, meta_grad, outer_grad, trace, meta, scale);
  }
}

void run_gated_step(const GatedStepCall& call) {
  const FlatOperands& ops = call.operands;
  if (ops.size() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard device_guard(ops.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_param_meta_types("sparse_optim::gated_sgd_step_", call.param_type, call.meta_type, [&](auto p_tag, auto m_tag) {
    using P = typename decltype(p_tag)::type;
    using M = typename decltype(m_tag)::type;
    using T = at::opmath_type<P>;
    const StepScalars<T> s = cast_scalars<T>(call.scalars);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.momentum, [&](auto momentum) {
        dispatch_bool(ops.has(step_list::traces), [&](auto trace) {
          for_each_chunk_table<step_list::count>(ops, call.fresh_buffers, [&](const auto& table, int blocks) {
            gated_step_kernel<decltype(gate), decltype(momentum)::value, decltype(trace)::value, P, M>
                <<<blocks, kBlockThreads, 0, stream>>>(table, s);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      });
    });
  });
}

void run_meta_grad(const MetaGradCall& call) {
  const FlatOperands& ops = call.operands;
  if (ops.size() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard device_guard(ops.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_param_meta_types("sparse_optim::meta_grad_accumulate_", call.grad_type, call.meta_type, [&](auto g_tag, auto m_tag) {
    using G = typename decltype(g_tag)::type;
    using M = typename decltype(m_tag)::type;
    using T = at::opmath_type<G>;
    const T scale = static_cast<T>(call.scale);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.true_derivative, [&](auto true_derivative) {
        for_each_chunk_table<meta_grad_list::count>(ops, {}, [&](const auto& table, int blocks) {
          meta_grad_kernel<decltype(gate), decltype(true_derivative)::value, G, M>
              <<<blocks, kBlockThreads, 0, stream>>>(table, scale);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_optim, CUDA, m) {
  m.impl("gated_sgd_step_", &gated_sgd_step_op<run_gated_step>);
  m.impl("meta_grad_accumulate_", &meta_grad_accumulate_op<run_meta_grad>);
}

}  // namespace sparse_optim
