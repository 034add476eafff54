// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Top-k with the library's tie rule, and the keep-mask → `Selection` step every scoring
/// policy ends with.
///
/// **Tie rule** (shared/ALGORITHMS.md): equal scores keep the more recent token (the larger
/// index). Each candidate becomes one 64-bit key `(order-preserving bits of the score) << 32 |
/// index`, so `nth_element` on plain integers applies score-then-recency in one comparison —
/// deterministic, O(n) on average, no indirection, no full sort.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <functional>
#include <span>

#include "../error.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"

namespace kvevict {

namespace kernels {
/// A 32-bit key that orders like the float (−0 and +0 equal; NaN above +inf).
inline std::uint32_t order_key(float x) noexcept {
  const auto u = std::bit_cast<std::uint32_t>(x + 0.0f);  // + 0 turns −0 into +0
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

/// Marks in `keep` the k highest-scoring candidates, the candidates being the indices i in
/// [begin, end) with `keep[i] == 0` (so protected tokens, already marked, are never
/// re-chosen). Ties go to the larger index. Returns how many were marked: min(k, candidates).
///
/// `scores` and `keep` are indexed by token. O(end − begin) on average (`nth_element`);
/// scratch: (end − begin) uint64 from `ws`.
inline index_t top_k(std::span<const float> scores, index_t begin, index_t end, index_t k,
                     std::span<std::uint8_t> keep, Workspace& ws) {
  if (k <= 0 || end <= begin) return 0;
  Workspace::Frame frame(ws);
  const auto keys = ws.take<std::uint64_t>(end - begin);
  std::size_t m = 0;
  for (index_t i = begin; i < end; ++i)
    if (keep[static_cast<std::size_t>(i)] == 0)
      keys[m++] = (std::uint64_t{kernels::order_key(scores[static_cast<std::size_t>(i)])} << 32) |
                  static_cast<std::uint32_t>(i);
  const std::size_t take = std::min(m, static_cast<std::size_t>(k));
  if (take < m)
    std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(take),
                     keys.begin() + static_cast<std::ptrdiff_t>(m), std::greater<>());
  for (std::size_t i = 0; i < take; ++i) keep[static_cast<std::size_t>(keys[i] & 0xffffffffu)] = 1;
  return static_cast<index_t>(take);
}

/// Marks [begin, end) in `keep` (a protected region: sinks, a recent window).
inline void keep_range(std::span<std::uint8_t> keep, index_t begin, index_t end) noexcept {
  std::fill(keep.begin() + begin, keep.begin() + std::max(begin, end), std::uint8_t{1});
}

/// Tokens marked in `keep`. O(n).
inline index_t kept_count(std::span<const std::uint8_t> keep) noexcept {
  index_t count = 0;
  for (std::uint8_t k : keep) count += k;
  return count;
}

/// Appends the next head of `out`: the marked tokens of `keep`, ascending. O(n).
inline void add_head_from_mask(Selection& out, std::span<const std::uint8_t> keep) {
  index_t count = 0;
  for (std::uint8_t k : keep) count += k;
  const auto kept = out.add_head(count);
  std::size_t next = 0;
  for (std::size_t t = 0; t < keep.size(); ++t)
    if (keep[t] != 0) kept[next++] = static_cast<token_t>(t);
}

}  // namespace kernels
}  // namespace kvevict
