// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Budget`: how many tokens each KV head keeps.

#include <cmath>

#include "error.hpp"

namespace kvevict {

/// Tokens kept per KV head, protected regions (sinks, recent windows) included: a count
/// (`Budget::tokens(512)`) or a fraction of the cache (`Budget::ratio(0.2)`). Budget-free
/// policies (CORM, whose cache size follows the content) take `Budget::none()`, which every
/// other policy rejects.
///
/// A ratio resolves to `round(r · n)` tokens (half away from zero), so 20% of 1000 tokens is
/// 200 and 20% of 1002 is 200. A budget that resolves to n or more keeps everything, bit for bit.
/// Validation happens at construction (count ≥ 1, ratio in (0, 1]) and at `resolve` (a ratio
/// that rounds to zero tokens is an error). O(1), no allocation.
class Budget {
 public:
  /// Keep `count` tokens per KV head; count ≥ 1.
  static Budget tokens(index_t count) {
    detail::require(count >= 1, "budget", "a token count >= 1", count);
    return Budget(count, 0.0);
  }

  /// Keep the fraction `r` of the tokens per KV head; 0 < r ≤ 1.
  static Budget ratio(double r) {
    detail::require(r > 0.0 && r <= 1.0, "budget", "a ratio in (0, 1]", r);
    return Budget(0, r);
  }

  /// No budget: for budget-free policies only.
  static Budget none() { return Budget(-1, 0.0); }

  bool is_none() const noexcept { return count_ < 0; }
  bool is_ratio() const noexcept { return count_ == 0; }
  /// The count given to `tokens` (0 for a ratio budget).
  index_t count() const noexcept { return count_; }
  /// The fraction given to `ratio` (0 for a count budget).
  double fraction() const noexcept { return ratio_; }

  /// Tokens to keep per KV head in a cache of `n` tokens (may exceed n: then keep all).
  index_t resolve(index_t n) const {
    if (is_none()) detail::fail("budget", "a token count or ratio for this policy", "none");
    if (!is_ratio()) return count_;
    const auto kept = static_cast<index_t>(std::llround(ratio_ * static_cast<double>(n)));
    if (kept < 1)
      detail::fail("budget", detail::cat("a ratio that keeps at least 1 of ", n, " tokens"),
                   ratio_);
    return kept;
  }

 private:
  Budget(index_t count, double ratio) : count_(count), ratio_(ratio) {}
  index_t count_;
  double ratio_;
};

}  // namespace kvevict
