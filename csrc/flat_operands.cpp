#include "flat_operands.h"

#include <c10/util/Exception.h>

namespace sparse_optim {
namespace {

bool share_dense_layout(const std::vector<const at::Tensor*>& slot) {
  const at::Tensor& first = *slot.front();
  for (const at::Tensor* t : slot) {
    if (!t->is_non_overlapping_and_dense() || t->strides() != first.strides()) {
      return false;
    }
  }
  return true;
}

}  // namespace

FlatOperands::FlatOperands(const char* op, const std::vector<ListArg>& args)
    : size_(static_cast<int64_t>(args.front().tensors.size())), tensors_(args.size()) {
  for (const ListArg& arg : args) {
    TORCH_CHECK(arg.tensors.empty() || static_cast<int64_t>(arg.tensors.size()) == size_, op, ": ", arg.name,
                " has ", arg.tensors.size(), " tensors, expected ", size_);
  }
  for (int64_t i = 0; i < size_; ++i) {
    std::vector<const at::Tensor*> slot;  // the tensors at index i of the present lists
    for (const ListArg& arg : args) {
      if (arg.tensors.empty()) {
        continue;
      }
      const at::Tensor& t = arg.tensors[i];
      const at::Device device = args.front().tensors.front().device();
      TORCH_CHECK(t.defined() && t.layout() == at::kStrided, op, ": ", arg.name, "[", i,
                  "] must be a defined strided tensor");
      TORCH_CHECK_NOT_IMPLEMENTED(t.device() == device, op, ": ", arg.name, "[", i, "] is on ", t.device(), ", expected ", device);
      TORCH_CHECK(slot.empty() || t.sizes() == slot.front()->sizes(), op, ": ", arg.name, "[", i,
                  "] has shape ", t.sizes(), ", expected ", slot.front()->sizes());
      slot.push_back(&t);
    }
    const bool shared = share_dense_layout(slot);
    size_t k = 0;
    for (size_t list = 0; list < args.size(); ++list) {
      if (args[list].tensors.empty()) {
        continue;
      }
      const at::Tensor& t = *slot[k++];
      if (shared || t.is_contiguous()) {
        tensors_[list].push_back(t);
        continue;
      }
      at::Tensor copy = t.contiguous();
      if (args[list].written) {
        copies_.emplace_back(t, copy);
      }
      tensors_[list].push_back(std::move(copy));
    }
  }
}

void* FlatOperands::data(size_t list, int64_t index) const {
  return has(list) ? tensors_[list][index].mutable_data_ptr() : nullptr;
}

at::ScalarType FlatOperands::dtype(size_t list) const {
  TORCH_INTERNAL_ASSERT(has(list));
  return tensors_[list].front().scalar_type();
}

at::Device FlatOperands::device() const {
  return size_ > 0 ? tensors_[0].front().device() : at::Device(at::kCPU);
}

void FlatOperands::copy_back() const {
  for (const auto& [original, copy] : copies_) {
    original.copy_(copy);
  }
}

}  // namespace sparse_optim
