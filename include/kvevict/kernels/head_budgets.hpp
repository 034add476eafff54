// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief AdaKV's head-adaptive budgets: heads whose attention is concentrated give tokens to
/// heads whose attention is spread.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "../error.hpp"
#include "../workspace.hpp"
#include "topk.hpp"

namespace kvevict {

namespace detail {

/// `head_budgets` with the safeguard given as a count: each head keeps its `safe` best (clamped
/// to [0, k]); the other heads · (k − safe) places go to the best remaining pairs.
inline void head_budgets_with(std::span<const float> scores, index_t heads, index_t m, index_t k,
                              index_t safe, std::span<index_t> budgets, Workspace& ws) {
  require(k >= 0 && k <= m, "budget", cat("0 <= k <= m (", m, ") per head"), k);
  if (static_cast<index_t>(scores.size()) != heads * m ||
      static_cast<index_t>(budgets.size()) != heads)
    fail("head_budgets", "scores of heads · m and one budget per head", "scores=", scores.size(),
         ", budgets=", budgets.size());
  safe = std::clamp<index_t>(safe, 0, k);
  Workspace::Frame frame(ws);
  const auto keep = ws.take<std::uint8_t>(heads * m);
  std::fill(keep.begin(), keep.end(), std::uint8_t{0});
  for (index_t h = 0; h < heads; ++h) kernels::top_k(scores, h * m, (h + 1) * m, safe, keep, ws);
  kernels::top_k(scores, 0, heads * m, heads * (k - safe), keep, ws);
  for (index_t h = 0; h < heads; ++h) {
    index_t count = 0;
    for (index_t j = 0; j < m; ++j) count += keep[static_cast<std::size_t>(h * m + j)];
    budgets[static_cast<std::size_t>(h)] = count;
  }
}

}  // namespace detail

namespace kernels {
/// Splits `heads · k` tokens among heads by their scores, as AdaKV does (Feng et al., arXiv
/// 2407.11550, §4 "Adaptive budget allocation"; kvpress `adakv_press.py`): every head keeps at
/// least its `⌊k · alpha⌋` best tokens (the safeguard), and the other `heads · (k − ⌊k·alpha⌋)`
/// places go to the best remaining (head, token) pairs across all heads. Writes each head's
/// budget (safeguard + what it won) into `budgets`; they sum to heads · k.
///
/// `scores` is [heads][m] (comparable across heads: attention probabilities); k ≤ m;
/// alpha in [0, 1]. O(heads · m) on average; scratch heads · m · 9 bytes from `ws`. Ties go to
/// the later (head, token) pair, like every top-k of the library.
inline void head_budgets(std::span<const float> scores, index_t heads, index_t m, index_t k,
                         double alpha, std::span<index_t> budgets, Workspace& ws) {
  detail::require(alpha >= 0.0 && alpha <= 1.0, "alpha_safeguard", "a fraction in [0, 1]", alpha);
  detail::head_budgets_with(scores, heads, m, k,
                            static_cast<index_t>(std::floor(static_cast<double>(k) * alpha)),
                            budgets, ws);
}

}  // namespace kernels
namespace detail {

/// AdaKV budgets for `choose`: the candidates of each row (the tokens between the protected
/// regions) compete for heads · (b − marked) places; each head first keeps its best
/// `safe_total − marked` candidates (its safeguard beyond the protected tokens, which always
/// stay). Writes each row's total, the `marked` protected tokens included. Scratch: heads ·
/// candidates floats, plus `head_budgets`'.
inline void adaptive_budgets(std::span<const float> rows, index_t heads, index_t n, index_t first,
                             index_t last, index_t marked, index_t b, index_t safe_total,
                             std::span<index_t> budgets, Workspace& ws) {
  const index_t m = last - first, k = std::min(b - marked, m);
  Workspace::Frame frame(ws);
  const auto candidates = ws.take<float>(heads * m);
  for (index_t h = 0; h < heads; ++h)
    std::copy_n(rows.data() + h * n + first, m, candidates.data() + h * m);
  head_budgets_with(candidates, heads, m, k, safe_total - marked, budgets, ws);
  for (index_t& x : budgets) x += marked;
}

}  // namespace detail
}  // namespace kvevict
