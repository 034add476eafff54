// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Reduction of per-query-head scores over GQA groups (or over all heads).

#include <algorithm>
#include <span>
#include <string_view>

#include "../error.hpp"

namespace kvevict {

/// How the scores of several query heads become one score per KV head.
enum class GroupReduce {
  mean,  ///< the default of every per-KV-head policy (SnapKV, H2O, CriticalKV)
  max,
  sum,  ///< NACL: the sum keeps the sampling temperature of the paper
};

/// The command-line spelling of a `GroupReduce`.
constexpr std::string_view to_string(GroupReduce r) {
  switch (r) {
    case GroupReduce::mean:
      return "mean";
    case GroupReduce::max:
      return "max";
    case GroupReduce::sum:
      return "sum";
  }
  return "?";
}

/// Reduces `in` ([q_heads][n], row-major) into `out`: per KV head over its group of
/// g = q_heads / kv_heads query heads ([kv_heads][n]), or over all query heads when `shared`
/// ([1][n]; the one set a shared selection ranks). O(q_heads · n); no allocation.
inline void reduce_groups(std::span<const float> in, index_t q_heads, index_t n, index_t kv_heads,
                          GroupReduce mode, bool shared, std::span<float> out) {
  const index_t groups = shared ? 1 : kv_heads;
  const index_t g = q_heads / groups;
  if (static_cast<index_t>(in.size()) != q_heads * n ||
      static_cast<index_t>(out.size()) != groups * n || q_heads % groups != 0)
    detail::fail("reduce_groups", "in = q_heads · n, out = (shared ? 1 : kv_heads) · n floats",
                 "in=", in.size(), ", out=", out.size());
  for (index_t grp = 0; grp < groups; ++grp) {
    float* dst = out.data() + grp * n;
    const float* first = in.data() + grp * g * n;
    std::copy(first, first + n, dst);
    for (index_t h = 1; h < g; ++h) {
      const float* src = first + h * n;
      if (mode == GroupReduce::max)
        for (index_t j = 0; j < n; ++j) dst[j] = std::max(dst[j], src[j]);
      else
        for (index_t j = 0; j < n; ++j) dst[j] += src[j];
    }
    if (mode == GroupReduce::mean) {
      const float inv = 1.0f / static_cast<float>(g);
      for (index_t j = 0; j < n; ++j) dst[j] *= inv;
    }
  }
}

}  // namespace kvevict
