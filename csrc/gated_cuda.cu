// CUDA kernels of the gated SGD ops: multi-tensor launches meant to run at memory bandwidth.
//
// The layout follows PyTorch's ATen/native/cuda/MultiTensorApply.cuh and FusedSgdKernel.cu:
// chunks of 65536 elements, one 512-thread block per chunk, each thread loading a group of
// elements of every operand into registers before it stores any, vector loads where aligned,
// and CUDA 12.1's 32 KB kernel arguments. Two choices differ: a block finds its tensor by binary
// search in a prefix sum of chunk counts, so one launch covers any number of chunks of up to
// `capacity` tensors (no 320-block limit); and a group is 16 bytes of the narrowest operand
// (8 elements for bfloat16 / float16 parameters, else 4). The arithmetic is gated_math.h's.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "dispatch.h"
#include "gated_math.h"
#include "gated_ops.h"

namespace sparse_optim {
namespace {

constexpr int kBlockThreads = 512;
constexpr int64_t kChunkElements = 1 << 16;
constexpr int64_t kMaxBlocksPerLaunch = std::numeric_limits<int32_t>::max();

// CUDA 12.1+ with a driver >= 530 on sm_70+ accepts 32764 bytes of kernel arguments. Every
// driver and architecture that CUDA 13 supports does, so CUDA 13 builds use them; older toolkits
// keep the classic 4 KB (a runtime driver check would need both sizes compiled, as PyTorch does).
// __grid_constant__ (sm_70+, so CUDA 13 only here) reads the table in place, never a local copy.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000 && !defined(SPARSE_OPTIM_SMALL_KERNEL_ARGS)
constexpr size_t kKernelArgBytes = 32764;
#define SPARSE_OPTIM_GRID_CONSTANT __grid_constant__
#else
constexpr size_t kKernelArgBytes = 4096;
#define SPARSE_OPTIM_GRID_CONSTANT
#endif

// Per-tensor flags of the table.
constexpr uint8_t kFlagFreshBuffer = 1;  // gated_sgd_step_: the momentum buffer starts at d (not read)
constexpr uint8_t kFlagVectorized = 2;   // every pointer is aligned for the vector loads

// Kernel argument: the lists' data pointers and sizes of up to kCapacity tensors; blocks
// [first_block[t], first_block[t + 1]) handle the chunks of tensor t.
template <int kLists, int kCapacity>
struct ChunkTable {
  static constexpr int capacity = kCapacity;
  void* data[kLists][kCapacity];
  int64_t numel[kCapacity];
  int32_t first_block[kCapacity + 1];
  uint8_t flags[kCapacity];
  int32_t tensors;
};

// The most tensors whose table fits in the kernel arguments beside `Extra` (the scalars).
template <int kLists, typename Extra>
constexpr int table_capacity() {
  constexpr size_t per_tensor = kLists * sizeof(void*) + sizeof(int64_t) + sizeof(int32_t) + sizeof(uint8_t);
  return static_cast<int>((kKernelArgBytes - sizeof(Extra) - 32) / per_tensor);
}

template <int kLists, typename Extra>
using TableFor = ChunkTable<kLists, table_capacity<kLists, Extra>()>;

// Elements per thread and group: 16 bytes of the narrowest storage type, at least 4.
template <typename A, typename B>
constexpr int group_elements() {
  constexpr size_t narrowest = sizeof(A) < sizeof(B) ? sizeof(A) : sizeof(B);
  return 16 / narrowest > 4 ? static_cast<int>(16 / narrowest) : 4;
}

// N elements of S as registers; loaded and stored with 16-byte (or N * sizeof(S)) accesses.
template <typename S, int N>
struct alignas(N * sizeof(S) < 16 ? N * sizeof(S) : 16) Lanes {
  S v[N];
};

template <typename S, int N>
constexpr size_t lanes_alignment() {
  return alignof(Lanes<S, N>);
}

// Lane j of a group is element first + j (kVector: the group is contiguous and aligned) or
// first + j * stride (coalesced scalar accesses), valid while below len.
template <bool kVector, int N, typename S>
__device__ __forceinline__ void load_lanes(Lanes<S, N>& r, const S* ptr, int first, int stride, int len) {
  if constexpr (kVector) {
    r = *reinterpret_cast<const Lanes<S, N>*>(ptr + first);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int i = first + j * stride;
      if (i < len) {
        r.v[j] = ptr[i];
      }
    }
  }
}

template <bool kVector, int N, typename S>
__device__ __forceinline__ void store_lanes(S* ptr, const Lanes<S, N>& r, int first, int stride, int len) {
  if constexpr (kVector) {
    *reinterpret_cast<Lanes<S, N>*>(ptr + first) = r;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int i = first + j * stride;
      if (i < len) {
        ptr[i] = r.v[j];
      }
    }
  }
}

template <bool kVector>
__device__ __forceinline__ bool lane_valid(int first, int j, int stride, int len) {
  return kVector || first + j * stride < len;
}

// Calls group(vector_tag, first, stride) for this thread's groups of a chunk of len elements:
// aligned chunks in vector groups plus a scalar tail of fewer than N elements, others in
// scalar groups of N elements blockDim.x apart.
template <int N, bool kAligned, typename Group>
__device__ __forceinline__ void for_each_group(int len, const Group& group) {
  if constexpr (kAligned) {
    const int groups = len / N;
    for (int k = threadIdx.x; k < groups; k += blockDim.x) {
      group(std::true_type{}, k * N, 1);
    }
    const int tail = groups * N + threadIdx.x;  // lanes j > 0 are past len: N <= blockDim.x
    if (tail < len) {
      group(std::false_type{}, tail, blockDim.x);
    }
  } else {
    for (int first = threadIdx.x; first < len; first += blockDim.x * N) {
      group(std::false_type{}, first, blockDim.x);
    }
  }
}

// This block's tensor (slot of the table), the first element of its chunk and the chunk's length.
struct BlockChunk {
  int slot;
  int64_t begin;
  int len;
};

template <typename Table>
__device__ __forceinline__ BlockChunk locate_chunk(const Table& table) {
  const int32_t block = static_cast<int32_t>(blockIdx.x);
  int lo = 0, hi = table.tensors;  // first_block[lo] <= block < first_block[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (table.first_block[mid] <= block) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t begin = static_cast<int64_t>(block - table.first_block[lo]) * kChunkElements;
  const int64_t len = table.numel[lo] - begin;
  return {lo, begin, static_cast<int>(len < kChunkElements ? len : kChunkElements)};
}

template <typename S>
__device__ __forceinline__ S* chunk_pointer(void* base, int64_t begin) {
  return base == nullptr ? nullptr : static_cast<S*>(base) + begin;
}

// Host: fills tables with the non-empty tensors of `operands` and calls launch(table, blocks)
// for each. alignment[list]: the byte alignment the vector loads of that list need;
// fresh[i]: tensor i's momentum buffer is fresh (may be empty).
template <typename Table, size_t kLists, typename Launch>
void for_each_table(const FlatOperands& operands, const std::array<size_t, kLists>& alignment,
                    const std::vector<bool>& fresh, const Launch& launch) {
  Table table{};
  int tensors = 0;
  int64_t blocks = 0;
  const auto flush = [&] {
    if (tensors > 0) {
      table.tensors = tensors;
      table.first_block[tensors] = static_cast<int32_t>(blocks);
      launch(table, static_cast<int>(blocks));
    }
    tensors = 0;
    blocks = 0;
  };
  for (int64_t i = 0; i < operands.size(); ++i) {
    const int64_t n = operands.numel(i);
    if (n == 0) {
      continue;
    }
    const int64_t chunks = (n + kChunkElements - 1) / kChunkElements;
    TORCH_CHECK(chunks <= kMaxBlocksPerLaunch, "sparse_optim: a tensor of ", n, " elements is too large");
    if (tensors == Table::capacity || blocks + chunks > kMaxBlocksPerLaunch) {
      flush();
    }
    uint8_t flags = (!fresh.empty() && fresh[i]) ? kFlagFreshBuffer : 0;
    bool aligned = true;
    for (size_t list = 0; list < kLists; ++list) {
      void* data = operands.data(list, i);
      table.data[list][tensors] = data;
      aligned = aligned && reinterpret_cast<uintptr_t>(data) % alignment[list] == 0;
    }
    table.numel[tensors] = n;
    table.flags[tensors] = flags | (aligned ? kFlagVectorized : 0);
    table.first_block[tensors] = static_cast<int32_t>(blocks);
    blocks += chunks;
    ++tensors;
  }
  flush();
}

// --------------------------------------------------------------------------- gated_sgd_step_
template <typename Gate, bool kMomentum, bool kFreshBuffer, bool kTrace, bool kAligned, typename P, typename M,
          typename T>
__device__ __forceinline__ void gated_step_chunk(P* __restrict__ param, const P* __restrict__ grad,
                                                 const M* __restrict__ meta, P* __restrict__ buf,
                                                 M* __restrict__ trace, int len, const StepScalars<T>& s) {
  constexpr int N = group_elements<P, M>();
  for_each_group<N, kAligned>(len, [&](auto vector_tag, int first, int stride) {
    constexpr bool V = decltype(vector_tag)::value;
    Lanes<P, N> p, g, b;
    Lanes<M, N> m, t;
    load_lanes<V>(p, param, first, stride, len);
    load_lanes<V>(g, grad, first, stride, len);
    load_lanes<V>(m, meta, first, stride, len);
    if constexpr (kMomentum && !kFreshBuffer) {
      load_lanes<V>(b, buf, first, stride, len);
    }
    if constexpr (kTrace) {
      load_lanes<V>(t, trace, first, stride, len);
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (lane_valid<V>(first, j, stride, len)) {
        gated_step_element<Gate, kMomentum, kFreshBuffer, kTrace>(j, p.v, g.v, m.v, b.v, t.v, s);
      }
    }
    store_lanes<V>(param, p, first, stride, len);
    if constexpr (kMomentum) {
      store_lanes<V>(buf, b, first, stride, len);
    }
    if constexpr (kTrace) {
      store_lanes<V>(trace, t, first, stride, len);
    }
  });
}

template <typename T>
using StepTable = TableFor<step_list::count, StepScalars<T>>;

template <typename Gate, bool kMomentum, bool kTrace, typename P, typename M, typename T>
__global__ void __launch_bounds__(kBlockThreads)
    gated_step_kernel(const SPARSE_OPTIM_GRID_CONSTANT StepTable<T> table, const StepScalars<T> s) {
  namespace L = step_list;
  const BlockChunk c = locate_chunk(table);
  P* param = chunk_pointer<P>(table.data[L::params][c.slot], c.begin);
  const P* grad = chunk_pointer<P>(table.data[L::grads][c.slot], c.begin);
  const M* meta = chunk_pointer<M>(table.data[L::metas][c.slot], c.begin);
  P* buf = chunk_pointer<P>(table.data[L::momentum_buffers][c.slot], c.begin);
  M* trace = chunk_pointer<M>(table.data[L::traces][c.slot], c.begin);
  const uint8_t flags = table.flags[c.slot];
  const auto run = [&](auto fresh, auto aligned) {
    gated_step_chunk<Gate, kMomentum, decltype(fresh)::value, kTrace, decltype(aligned)::value>(
        param, grad, meta, buf, trace, c.len, s);
  };
  const auto with_alignment = [&](auto fresh) {
    if (flags & kFlagVectorized) {
      run(fresh, std::true_type{});
    } else {
      run(fresh, std::false_type{});
    }
  };
  if constexpr (kMomentum) {
    if (flags & kFlagFreshBuffer) {
      return with_alignment(std::true_type{});
    }
  }
  with_alignment(std::false_type{});
}

void run_gated_step(const GatedStepCall& call) {
  namespace L = step_list;
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
    using Table = StepTable<T>;
    static_assert(sizeof(Table) + sizeof(StepScalars<T>) <= kKernelArgBytes);
    constexpr int N = group_elements<P, M>();
    const size_t p_align = lanes_alignment<P, N>(), m_align = lanes_alignment<M, N>();
    std::array<size_t, L::count> alignment{};
    alignment[L::params] = alignment[L::grads] = alignment[L::momentum_buffers] = p_align;
    alignment[L::metas] = alignment[L::traces] = m_align;
    const StepScalars<T> s = cast_scalars<T>(call.scalars);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.momentum, [&](auto momentum) {
        dispatch_bool(ops.has(L::traces), [&](auto trace) {
          for_each_table<Table>(ops, alignment, call.fresh_buffers, [&](const Table& table, int blocks) {
            gated_step_kernel<decltype(gate), decltype(momentum)::value, decltype(trace)::value, P, M>
                <<<blocks, kBlockThreads, 0, stream>>>(table, s);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      });
    });
  });
}

// --------------------------------------------------------------------- meta_grad_accumulate_
// meta_grad may alias meta (online hypergradient steps): those two are not __restrict__; every
// lane is loaded before it is stored.
template <typename Gate, bool kTrueDerivative, bool kAligned, typename G, typename M, typename T>
__device__ __forceinline__ void meta_grad_chunk(M* meta_grad, const G* __restrict__ outer_grad,
                                                const M* __restrict__ trace, const M* meta, int len, T scale) {
  constexpr int N = group_elements<G, M>();
  for_each_group<N, kAligned>(len, [&](auto vector_tag, int first, int stride) {
    constexpr bool V = decltype(vector_tag)::value;
    Lanes<M, N> mg, t, m;
    Lanes<G, N> g;
    load_lanes<V>(mg, meta_grad, first, stride, len);
    load_lanes<V>(g, outer_grad, first, stride, len);
    load_lanes<V>(t, trace, first, stride, len);
    load_lanes<V>(m, meta, first, stride, len);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (lane_valid<V>(first, j, stride, len)) {
        meta_grad_element<Gate, kTrueDerivative>(j, mg.v, g.v, t.v, m.v, scale);
      }
    }
    store_lanes<V>(meta_grad, mg, first, stride, len);
  });
}

template <typename T>
using MetaGradTable = TableFor<meta_grad_list::count, T>;

template <typename Gate, bool kTrueDerivative, typename G, typename M, typename T>
__global__ void __launch_bounds__(kBlockThreads)
    meta_grad_kernel(const SPARSE_OPTIM_GRID_CONSTANT MetaGradTable<T> table, const T scale) {
  namespace L = meta_grad_list;
  const BlockChunk c = locate_chunk(table);
  M* meta_grad = chunk_pointer<M>(table.data[L::meta_grads][c.slot], c.begin);
  const G* outer_grad = chunk_pointer<G>(table.data[L::outer_grads][c.slot], c.begin);
  const M* trace = chunk_pointer<M>(table.data[L::traces][c.slot], c.begin);
  const M* meta = chunk_pointer<M>(table.data[L::metas][c.slot], c.begin);
  if (table.flags[c.slot] & kFlagVectorized) {
    meta_grad_chunk<Gate, kTrueDerivative, true>(meta_grad, outer_grad, trace, meta, c.len, scale);
  } else {
    meta_grad_chunk<Gate, kTrueDerivative, false>(meta_grad, outer_grad, trace, meta, c.len, scale);
  }
}

void run_meta_grad(const MetaGradCall& call) {
  namespace L = meta_grad_list;
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
    using Table = MetaGradTable<T>;
    static_assert(sizeof(Table) + sizeof(T) <= kKernelArgBytes);
    constexpr int N = group_elements<G, M>();
    std::array<size_t, L::count> alignment{};
    alignment[L::meta_grads] = alignment[L::traces] = alignment[L::metas] = lanes_alignment<M, N>();
    alignment[L::outer_grads] = lanes_alignment<G, N>();
    const T scale = static_cast<T>(call.scale);
    dispatch_gate(call.kind, [&](auto gate) {
      dispatch_bool(call.true_derivative, [&](auto true_derivative) {
        for_each_table<Table>(ops, alignment, {}, [&](const Table& table, int blocks) {
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
