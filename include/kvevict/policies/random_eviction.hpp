// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief RandomEviction: the baseline every scoring policy must beat.

#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../random.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `RandomEviction`.
struct RandomEvictionParams {
  index_t sinks = 0;       ///< First tokens always kept.
  index_t recent = 0;      ///< Last tokens always kept.
  std::uint64_t seed = 0;  ///< With the view's layer and the head, keys the random stream.
  bool shared = false;     ///< One set for all heads (drawn from head 0's stream).
};

/// Random eviction: keeps the protected sinks and recent tokens, then B − sinks − recent of the
/// others drawn uniformly without replacement (a partial Fisher–Yates shuffle), each KV head from
/// its own stream `RandomStream(seed, layer, head)` — the same inputs and seed give the same
/// selection. Reads no keys or queries.
///
/// - Complexity O(n) per head; scratch n bytes + (n − sinks − recent) ints from `ws`.
/// - Errors: B < sinks + recent unless B ≥ n.
class RandomEviction {
 public:
  static constexpr std::string_view name = "random";
  using Params = RandomEvictionParams;

  RandomEviction() : RandomEviction(Params{}) {}
  explicit RandomEviction(const Params& p) : params_(p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
    detail::require(p.recent >= 0, "recent", "recent >= 0", p.recent);
  }
  const Params& params() const noexcept { return params_; }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared,
                                           params_.sinks + params_.recent, "sinks + recent");
    if (b == 0) return;
    Workspace::Frame frame(ws);
    const index_t n = kv.tokens(), first = params_.sinks, last = n - params_.recent;
    const auto keep = ws.take<std::uint8_t>(n);
    const auto pool = ws.take<token_t>(last - first);
    for (index_t h = 0; h < out.stored_heads(); ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, 0, first);
      keep_range(keep, last, n);
      std::iota(pool.begin(), pool.end(), static_cast<token_t>(first));
      RandomStream rng(params_.seed, static_cast<std::uint64_t>(kv.layer()),
                       static_cast<std::uint64_t>(h));
      const auto m = static_cast<std::uint64_t>(pool.size());
      for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(b - first - params_.recent); ++i) {
        const std::uint64_t j = i + rng.next() % (m - i);  // bias < m / 2^64
        std::swap(pool[i], pool[j]);
        keep[static_cast<std::size_t>(pool[i])] = 1;
      }
      add_head_from_mask(out, keep);
    }
  }

 private:
  Params params_;
};

}  // namespace kvevict
