// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief 1-D max / average pooling with same-size output (SnapKV's clustering of scores).

#include <algorithm>
#include <array>
#include <span>
#include <string_view>

#include "../error.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Pooling kind.
enum class Pool {
  max,  ///< out-of-range neighbours are ignored (torch's −inf padding)
  avg,  ///< zero padding, divided by the kernel size (torch avg_pool1d, count_include_pad)
};

constexpr std::string_view to_string(Pool p) {
  return p == Pool::max ? "max" : "avg";
}

/// Every `Pool`, in the order the command lists them.
constexpr std::array<Pool, 2> all_values(Pool) {
  return {Pool::max, Pool::avg};
}

namespace kernels {
/// `out[j]` pools `in[j − ⌊k/2⌋ … j − ⌊k/2⌋ + k − 1]`: centred for odd k; for even k the window
/// of torch's `pool1d(padding = k/2)` output j (whose output is one longer; its last element is
/// dropped). `in` and `out` have the same size and must not alias.
///
/// O(n) whatever the kernel: small kernels (≤ 8, SnapKV's 5 and 7) loop directly; larger ones
/// use a running sum (avg, in double) or van Herk–Gil-Werman block maxima (max; 2n floats of
/// scratch from `ws`). No allocation once `ws` is warm.
inline void pool1d(std::span<const float> in, std::span<float> out, index_t kernel, Pool kind,
                   Workspace& ws) {
  detail::require(kernel >= 1, "kernel", "a pooling kernel >= 1", kernel);
  if (out.size() != in.size())
    detail::fail("out", detail::cat("as many floats as the input (", in.size(), ")"), out.size());
  const auto n = static_cast<index_t>(in.size());
  const index_t left = kernel / 2;
  const float inv = 1.0f / static_cast<float>(kernel);
  auto at = [&](index_t i) { return in[static_cast<std::size_t>(i)]; };
  auto lo_of = [&](index_t j) { return std::max<index_t>(0, j - left); };
  auto hi_of = [&](index_t j) { return std::min(n, j - left + kernel); };  // exclusive
  if (kernel <= 8) {
    for (index_t j = 0; j < n; ++j) {
      const index_t lo = lo_of(j), hi = hi_of(j);
      float acc = kind == Pool::max ? at(lo) : 0.0f;
      for (index_t t = lo; t < hi; ++t)
        acc = kind == Pool::max ? std::max(acc, at(t)) : acc + at(t);
      out[static_cast<std::size_t>(j)] = kind == Pool::max ? acc : acc * inv;
    }
    return;
  }
  if (kind == Pool::avg) {  // the window moves right by at most one element at each end
    double sum = 0;
    index_t lo = 0, hi = 0;
    for (index_t j = 0; j < n; ++j) {
      for (; hi < hi_of(j); ++hi) sum += at(hi);
      for (; lo < lo_of(j); ++lo) sum -= at(lo);
      out[static_cast<std::size_t>(j)] = static_cast<float>(sum / static_cast<double>(kernel));
    }
    return;
  }
  // Max: blocks of `kernel` aligned at 0; prefix[i] = max of its block up to i, suffix[i] = max
  // of its block from i. A window of at most `kernel` spans one block or two adjacent ones.
  Workspace::Frame frame(ws);
  const auto prefix = ws.take<float>(n), suffix = ws.take<float>(n);
  for (index_t b = 0; b < n; b += kernel) {
    const index_t e = std::min(n, b + kernel);
    prefix[static_cast<std::size_t>(b)] = at(b);
    for (index_t i = b + 1; i < e; ++i)
      prefix[static_cast<std::size_t>(i)] =
          std::max(prefix[static_cast<std::size_t>(i - 1)], at(i));
    suffix[static_cast<std::size_t>(e - 1)] = at(e - 1);
    for (index_t i = e - 2; i >= b; --i)
      suffix[static_cast<std::size_t>(i)] =
          std::max(suffix[static_cast<std::size_t>(i + 1)], at(i));
  }
  for (index_t j = 0; j < n; ++j) {
    const index_t lo = lo_of(j), last = hi_of(j) - 1;
    const index_t block_lo = lo / kernel, block_last = last / kernel;
    float m;
    if (block_lo != block_last)
      m = std::max(suffix[static_cast<std::size_t>(lo)], prefix[static_cast<std::size_t>(last)]);
    else if (lo == block_lo * kernel)  // starts at its block's start
      m = prefix[static_cast<std::size_t>(last)];
    else  // ends at its block's end (or at n − 1)
      m = suffix[static_cast<std::size_t>(lo)];
    out[static_cast<std::size_t>(j)] = m;
  }
}

}  // namespace kernels
}  // namespace kvevict
