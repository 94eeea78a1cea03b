// Tensor-list arguments of an op, validated and viewed as flat arrays (host code).
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

namespace sparse_optim {

// One Tensor[] argument of an op. An empty list stands for an absent optional list.
struct ListArg {
  const char* name;
  at::TensorList tensors;
  bool written;
};

// The tensors of one op call. At every index, all lists share one dense memory layout, so a
// kernel can walk them as flat arrays of numel(index) elements. Where the given tensors do not
// share such a layout, contiguous copies are used, and copy_back() writes the copies of written
// tensors into the originals. Shapes, devices and layouts are checked on construction.
class FlatOperands {
 public:
  FlatOperands(const char* op, const std::vector<ListArg>& args);

  int64_t size() const { return size_; }
  int64_t numel(int64_t index) const { return tensors_[0][index].numel(); }
  bool has(size_t list) const { return !tensors_[list].empty(); }
  const at::Tensor& tensor(size_t list, int64_t index) const { return tensors_[list][index]; }
  // nullptr for an absent list.
  void* data(size_t list, int64_t index) const;
  at::ScalarType dtype(size_t list) const;
  // The device of the tensors (CPU when the lists are empty).
  at::Device device() const;

  void copy_back() const;

 private:
  int64_t size_;
  std::vector<std::vector<at::Tensor>> tensors_;           // [list][index]
  std::vector<std::pair<at::Tensor, at::Tensor>> copies_;  // (written original, its contiguous copy)
};

}  // namespace sparse_optim
