// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `PeriodicDriver`: decode-time compression with any one-shot policy — every N new
/// tokens the cache is compressed back to its budget with the policy's own scoring.
///
/// Semantics pinned to kvpress's `DecodingPress` (presses/decoding_press.py, commit 8bb29b9):
/// the cache grows by one token per step; when it holds B + N tokens (N = `every`) the policy
/// selects B of them with the last queries as its observation window, and the cache is compacted
/// back to B. `DecodingPress` protects nothing itself and neither does this driver: sinks and
/// recent windows are the policy's own (SnapKV keeps its window, ExpectedAttention its sinks…).
/// Two deviations: kvpress scores with the hidden states of the steps since the last compression
/// (at most 256), where here the engine passes whichever recent queries it keeps (`window ≥ 1`,
/// at most the cache); and kvpress's cache after a compression is in top-k order, where here
/// `compact` keeps position order, so "the last w tokens" are the most recent ones.
///
/// Positions: after a compression each head holds different tokens, so the view carries no
/// positions (as in `eval::replay`); position-aware scorers see slot order, which is position
/// order per head. `position(head, slot)` gives a slot's original position.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "budget.hpp"
#include "compact.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "metadata.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

/// Drives periodic compression of one sequence's cache in an engine's memory. Owns the
/// positions of its slots and reusable selection/compaction buffers, not the memory: `slots`
/// views B + N token slots per KV head (any layout `compact` accepts), filled from slot 0 in
/// position order. No allocation per step once warm; a compression costs one `select` over the
/// B + N tokens plus one `compact`, amortised over N steps (`BM_Periodic_*` in bench/).
///
/// **Example** (the engine keeps the last `w` queries of the sequence):
/// \code
/// #include <kvevict/periodic.hpp>
///
/// kvevict::PeriodicDriver<Eigen::half> drv(kvevict::parse_policy("snapkv:window=16"), 2048, 64,
///                                          slots);
/// for (std::int64_t pos = 0; generating(); ++pos) {
///   drv.append(pos, new_keys, new_values);      // into slot drv.size() − 1 of every head
///   attend(slots.with_tokens(drv.size()), query);
///   drv.observe(recent_queries, ws);            // compresses to 2048 when it holds 2048 + 64
/// }
/// \endcode
///
/// Errors are `kvevict::error`; a failed call changes nothing (the selection is checked
/// before `compact` moves anything).
template <FloatElement T>
class PeriodicDriver {
 public:
  /// `policy`: a one-shot policy that needs a budget (streaming and budget-free ones are
  /// refused) — a policy type, or an `AnyPolicy` (any_policy.hpp); it is copied. `budget`
  /// B ≥ 1 tokens per KV head; `every` N ≥ 1; `slots.tokens() == B + N`.
  template <class P>
  requires selects_from_window<P, T> PeriodicDriver(const P& policy, index_t budget, index_t every,
                                                    const KVCache<T>& slots)
      : select_([policy](const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Budget b,
                         Selection& out, Workspace& ws) { policy.select(kv, q, b, out, ws); }),
        budget_(budget),
        every_(every),
        slots_(slots) {
    const PolicyInfo& info = info_of_policy(policy);
    const std::string name(name_of_policy(policy));
    if (info.streaming)
      detail::fail("policy", "a one-shot policy (a streaming one evicts at every step itself)",
                   name);
    if (info.budget_free) detail::fail("policy", "a policy that takes a budget", name);
    detail::require(budget >= 1, "budget", "at least 1 token per KV head", budget);
    detail::require(every >= 1, "every", "at least 1 token between compressions", every);
    if (slots.tokens() != budget + every)
      detail::fail("slots.tokens", detail::cat("budget + every (", budget + every, ") slots"),
                   slots.tokens());
    positions_.assign(static_cast<std::size_t>(slots.kv_heads() * slots.tokens()), -1);
  }

  /// Writes the new token's keys (`kv_heads · head_dim` elements, head-major) and values
  /// (`kv_heads · head_dim_v`) into slot `size()` of every head; returns that slot. Throws when
  /// the cache is full (`observe` was not called after the step that filled it) or `position`
  /// is not after the last one.
  token_t append(std::int64_t position, std::span<const T> keys, std::span<const T> values) {
    const index_t heads = slots_.kv_heads(), d = slots_.head_dim(), dv = slots_.head_dim_v();
    if (static_cast<index_t>(keys.size()) != heads * d)
      detail::fail("keys", detail::cat("kv_heads · head_dim (", heads * d, ") elements"),
                   keys.size());
    if (static_cast<index_t>(values.size()) != heads * dv)
      detail::fail("values", detail::cat("kv_heads · head_dim_v (", heads * dv, ") elements"),
                   values.size());
    if (size_ == slots_.tokens())
      detail::fail("append", "a free slot (call observe after every append)",
                   detail::cat("all ", size_, " slots live"));
    if (position <= last_)
      detail::fail("position", detail::cat("a position after the last one (", last_, ")"),
                   position);
    const index_t s = size_;
    for (index_t h = 0; h < heads; ++h) {
      std::copy_n(keys.data() + h * d, d, slots_.key(h, s).data());
      std::copy_n(values.data() + h * dv, dv, slots_.value(h, s).data());
      positions_[static_cast<std::size_t>(h * slots_.tokens() + s)] = position;
    }
    ++size_;
    last_ = position;
    return static_cast<token_t>(s);
  }

  /// After the step's attention: when the cache holds B + N tokens, selects B of them with
  /// `recent` (the last queries, `window ≤ size()`) as the observation window and compacts.
  /// Returns the tokens evicted per KV head (0 between compressions).
  index_t observe(const QueryWindow<query_type<T>>& recent, Workspace& ws) {
    if (size_ < budget_ + every_) return 0;
    const KVCache<T> kv = slots_.with_tokens(size_);
    select_(kv, recent, Budget::tokens(budget_), sel_, ws);
    for (index_t h = 1; h < kv.kv_heads(); ++h)
      if (sel_.size(h) != sel_.size(0))
        detail::fail("policy",
                     "equal counts per KV head (granularity per_head without ada, "
                     "equal, shared or layers)",
                     detail::cat("head sizes ", sel_.size(0), " and ", sel_.size(h)));
    compact(kv, sel_, compaction_);
    const index_t cap = slots_.tokens();
    for (index_t h = 0; h < kv.kv_heads(); ++h) {
      std::int64_t* p = positions_.data() + h * cap;
      const auto kept = sel_.kept(h);
      for (std::size_t i = 0; i < kept.size(); ++i) p[i] = p[static_cast<std::size_t>(kept[i])];
      std::fill(p + kept.size(), p + cap, std::int64_t{-1});
    }
    const index_t evicted = size_ - sel_.size(0);
    size_ = sel_.size(0);
    ++compressions_;
    return evicted;
  }

  /// Live tokens per KV head (slots 0 … size() − 1).
  index_t size() const noexcept { return size_; }
  /// Compressions so far.
  index_t compressions() const noexcept { return compressions_; }
  /// The original position of `slot` of `head`, −1 when free.
  std::int64_t position(index_t head, index_t slot) const noexcept {
    return positions_[static_cast<std::size_t>(head * slots_.tokens() + slot)];
  }

 private:
  std::function<void(const KVCache<T>&, const QueryWindow<query_type<T>>&, Budget, Selection&,
                     Workspace&)>
      select_;
  index_t budget_, every_;
  KVCache<T> slots_;
  std::vector<std::int64_t> positions_;
  index_t size_ = 0, compressions_ = 0;
  std::int64_t last_ = -1;
  Selection sel_;
  Compaction compaction_;
};

}  // namespace kvevict
