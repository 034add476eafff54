// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `OutputProjection`: a non-owning view of one layer's attention output projection W_o,
/// split by query head (`[q_heads, head_dim, hidden]`), for policies that weigh value states by
/// what they contribute to the layer's output (CriticalKV).

#include <array>
#include <span>

#include "element.hpp"
#include "error.hpp"
#include "layout.hpp"

namespace kvevict {

/// W_o of one layer as `q_heads` slices W_o^h of `head_dim × hidden`: element (h, i, k) — how
/// coordinate i of head h's attention output feeds hidden unit k — at
/// `data + h · head_stride + i · row_stride + k · col_stride`. Storage float, half or bf16.
///
/// Two layouts have named constructors: `dense` for `[q_heads][head_dim][hidden]` (the `.npy`
/// layout of the command), and `from_linear_weight` for a PyTorch `o_proj.weight` of shape
/// `[hidden][q_heads · head_dim]` (W_o^h = the transpose of its column block h), with no copy.
/// Construction validates extents and strides in O(1); the view owns nothing.
class OutputProjection {
 public:
  template <FloatElement T>
  OutputProjection(const T* data, index_t q_heads, index_t head_dim, index_t hidden,
                   index_t head_stride, index_t row_stride, index_t col_stride)
      : data_(data),
        dtype_(dtype_of<T>()),
        q_heads_(q_heads),
        head_dim_(head_dim),
        hidden_(hidden),
        head_stride_(head_stride),
        row_stride_(row_stride),
        col_stride_(col_stride) {
    detail::require(data != nullptr, "wo.data", "a non-null pointer", "nullptr");
    detail::require(q_heads >= 1, "wo.q_heads", "at least 1 query head", q_heads);
    detail::require(head_dim >= 1, "wo.head_dim", "head_dim >= 1", head_dim);
    detail::require(hidden >= 1, "wo.hidden", "hidden >= 1", hidden);
    const std::array<detail::LatticeDim, 3> dims{
        {{q_heads, head_stride}, {head_dim, row_stride}, {hidden, col_stride}}};
    if (!detail::nested_disjoint(dims, 1))
      detail::fail("wo", "strides under which no two elements share memory",
                   "head_stride=", head_stride, ", row_stride=", row_stride,
                   ", col_stride=", col_stride);
  }

  /// `[q_heads][head_dim][hidden]`, C order.
  template <FloatElement T>
  static OutputProjection dense(const T* data, index_t q_heads, index_t head_dim, index_t hidden) {
    return {data, q_heads, head_dim, hidden, head_dim * hidden, hidden, 1};
  }

  /// A linear layer's weight `[hidden][q_heads · head_dim]` (PyTorch `o_proj.weight`,
  /// out × in): W_o^h[i][k] = weight[k][h · head_dim + i].
  template <FloatElement T>
  static OutputProjection from_linear_weight(const T* weight, index_t q_heads, index_t head_dim,
                                             index_t hidden) {
    return {weight, q_heads, head_dim, hidden, head_dim, 1, q_heads * head_dim};
  }

  index_t q_heads() const noexcept { return q_heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t hidden() const noexcept { return hidden_; }
  DType dtype() const noexcept { return dtype_; }

  /// Element (h, i, k) in fp32.
  float at(index_t h, index_t i, index_t k) const noexcept {
    const index_t o = h * head_stride_ + i * row_stride_ + k * col_stride_;
    switch (dtype_) {
      case DType::float32:
        return static_cast<const float*>(data_)[o];
      case DType::float16:
        return to_float(static_cast<const Eigen::half*>(data_)[o]);
      case DType::bfloat16:
        return to_float(static_cast<const Eigen::bfloat16*>(data_)[o]);
      default:  // the constructors take float types only
        return 0.0f;
    }
  }

  /// W_o^h in fp32, row-major `head_dim × hidden`, into `out`. O(head_dim · hidden).
  void head(index_t h, std::span<float> out) const {
    if (static_cast<index_t>(out.size()) != head_dim_ * hidden_)
      detail::fail("out", detail::cat("head_dim · hidden (", head_dim_ * hidden_, ") floats"),
                   out.size());
    if (dtype_ == DType::float32 && col_stride_ == 1) {
      const auto* base = static_cast<const float*>(data_) + h * head_stride_;
      for (index_t i = 0; i < head_dim_; ++i)
        std::copy_n(base + i * row_stride_, hidden_, out.data() + i * hidden_);
      return;
    }
    for (index_t i = 0; i < head_dim_; ++i)
      for (index_t k = 0; k < hidden_; ++k)
        out[static_cast<std::size_t>(i * hidden_ + k)] = at(h, i, k);
  }

 private:
  const void* data_;
  DType dtype_;
  index_t q_heads_, head_dim_, hidden_, head_stride_, row_stride_, col_stride_;
};

}  // namespace kvevict
