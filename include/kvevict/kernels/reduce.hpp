// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Reduction of per-query-head scores over GQA groups (or over all heads).

#include <algorithm>
#include <array>
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

/// Every `GroupReduce`, in the order the command lists them.
constexpr std::array<GroupReduce, 3> all_values(GroupReduce) {
  return {GroupReduce::mean, GroupReduce::max, GroupReduce::sum};
}

namespace kernels {
/// Reduces the g rows of one group — row r starts at `first + r · row_stride`, n floats each —
/// into `out` (n floats): their maximum, sum, or mean (the sum times 1/g). Row by row, so every
/// loop is contiguous and vectorises. O(g · n); no allocation. `out` must not alias the rows.
inline void reduce_group(const float* first, index_t row_stride, index_t g, index_t n,
                         GroupReduce mode, float* out) noexcept {
  std::copy(first, first + n, out);
  for (index_t r = 1; r < g; ++r) {
    const float* src = first + r * row_stride;
    if (mode == GroupReduce::max)
      for (index_t j = 0; j < n; ++j) out[j] = std::max(out[j], src[j]);
    else
      for (index_t j = 0; j < n; ++j) out[j] += src[j];
  }
  if (mode == GroupReduce::mean) {
    const float inv = 1.0f / static_cast<float>(g);
    for (index_t j = 0; j < n; ++j) out[j] *= inv;
  }
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
  for (index_t grp = 0; grp < groups; ++grp)
    kernels::reduce_group(in.data() + grp * g * n, n, g, n, mode, out.data() + grp * n);
}

}  // namespace kernels
}  // namespace kvevict
