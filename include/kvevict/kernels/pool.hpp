// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief 1-D max / average pooling with same-size output (SnapKV's clustering of scores).

#include <algorithm>
#include <span>
#include <string_view>

#include "../error.hpp"

namespace kvevict {

/// Pooling kind.
enum class Pool {
  max,  ///< out-of-range neighbours are ignored (torch's −inf padding)
  avg,  ///< zero padding, divided by the kernel size (torch avg_pool1d, count_include_pad)
};

constexpr std::string_view to_string(Pool p) {
  return p == Pool::max ? "max" : "avg";
}

/// `out[j]` pools `in[j − ⌊k/2⌋ … j − ⌊k/2⌋ + k − 1]`: centred for odd k; for even k the window
/// of torch's `pool1d(padding = k/2)` output j (whose output is one longer; its last element is
/// dropped). `in` and `out` have the same size and must not alias. O(n · k); no allocation.
inline void pool1d(std::span<const float> in, std::span<float> out, index_t kernel, Pool kind) {
  detail::require(kernel >= 1, "kernel", "a pooling kernel >= 1", kernel);
  if (out.size() != in.size())
    detail::fail("out", detail::cat("as many floats as the input (", in.size(), ")"), out.size());
  const auto n = static_cast<index_t>(in.size());
  const index_t left = kernel / 2;
  const float inv = 1.0f / static_cast<float>(kernel);
  for (index_t j = 0; j < n; ++j) {
    const index_t lo = std::max<index_t>(0, j - left), hi = std::min(n, j - left + kernel);
    float acc = kind == Pool::max ? in[static_cast<std::size_t>(lo)] : 0.0f;
    for (index_t t = lo; t < hi; ++t) {
      const float v = in[static_cast<std::size_t>(t)];
      acc = kind == Pool::max ? std::max(acc, v) : acc + v;
    }
    out[static_cast<std::size_t>(j)] = kind == Pool::max ? acc : acc * inv;
  }
}

}  // namespace kvevict
