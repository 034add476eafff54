// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief CORM: evict a key once none of the recent queries found it important.

#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// CORM's importance threshold.
enum class CORMThreshold {
  t,     ///< 1/t, t the 1-based position of the current token (the paper's Definition 1)
  live,  ///< 1/|cache|, the uniform level over the tokens actually attended (extension)
};

constexpr std::string_view to_string(CORMThreshold t) {
  return t == CORMThreshold::t ? "t" : "live";
}

/// Parameters of `CORM` (the paper's "256+256").
struct CORMParams {
  index_t w = 256;  ///< recent queries: a key is evicted once unimportant for all of the last w
  index_t r = 256;  ///< recent keys, never evicted
  CORMThreshold threshold = CORMThreshold::t;
  /// Extension: a cap on the cache. When over it, the keys whose last important step is the
  /// oldest leave first (ties: the older key). 0: no cap (the engine's capacity still is one).
  index_t max_tokens = 0;
  bool shared = false;  ///< one set for all heads: important for any query head at all.
};

/// CORM, Cache Optimization with Recent Message (Dai et al., arXiv 2404.15949, §3 Definitions 1–2
/// and §4 "CORM"; no official code). Budget-free: the cache holds what recent queries need.
///
/// - Key i is **important** at step t when its attention is at least 1/t (t = the current
///   token's 1-based position; the `live` option uses 1/|cache|). Under GQA a key is important
///   when it is for **any** query head of its KV head's group (the paper only says CORM is
///   compatible with GQA; this is the natural reading, and the choice here).
/// - State: per (KV head, key) the last step at which it was important (a key that never was
///   holds −1; a new key counts from its own step's attention).
/// - Eviction, every step: a key outside the last r tokens whose last important step is more
///   than w − 1 steps ago (not important for any of the last w queries) leaves. Several keys may
///   leave in one step, or none.
/// - `max_tokens` (extension) and the engine's slot capacity cap the cache: when over, the keys
///   with the oldest last important step go first, never the last r.
/// - One-shot `select` is an **approximation** over the query window: keep the last r and every
///   key important for at least one window query (query i at position n − w_q + i, threshold
///   1/(position + 1)), computed as `max_i (t_i · A_i[j]) ≥ 1`. `Budget::none()` or any budget
///   below n (then a cap, like `max_tokens`); a budget ≥ n keeps everything.
///
/// - Streaming: `start` allocates O(kv_heads · capacity); a step is O(q_heads · slots) and never
///   allocates. One-shot: one `window_attention` + O(n) per head.
class CORM {
 public:
  static constexpr std::string_view name = "corm";
  static constexpr bool budget_free = true;
  using Params = CORMParams;

  CORM() : CORM(Params{}) {}
  explicit CORM(const Params& p) : params_(p) {
    detail::require(p.w >= 1, "w", "w >= 1 recent queries", p.w);
    detail::require(p.r >= 0, "r", "r >= 0 recent keys", p.r);
    detail::require(
        p.max_tokens == 0 || p.max_tokens >= std::max<index_t>(p.r, 1), "max_tokens",
        detail::cat("0 (no cap) or at least max(r, 1) (", std::max<index_t>(p.r, 1), ")"),
        p.max_tokens);
  }
  const Params& params() const noexcept { return params_; }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    check_window(kv, queries);
    const index_t n = kv.tokens(), w = queries.window();
    index_t cap = params_.max_tokens == 0 ? n : std::min(params_.max_tokens, n);
    if (!budget.is_none()) {
      const index_t b = budget.resolve(n);
      if (b >= n) return out.keep_all(kv.kv_heads(), n, params_.shared);
      cap = std::min(cap, b);
    }
    const index_t r = std::min(params_.r, n);
    if (cap < r) detail::fail("budget", detail::cat("at least r (", r, ") tokens"), cap);
    out.reset(kv.kv_heads(), n, params_.shared);
    Workspace::Frame frame(ws);
    const index_t q_heads = queries.q_heads(), stored = out.stored_heads();
    const auto weights = ws.take<float>(w);
    for (index_t i = 0; i < w; ++i)
      weights[static_cast<std::size_t>(i)] = static_cast<float>(n - w + i + 1);
    const auto attention = ws.take<float>(q_heads * n);
    window_attention(kv, queries, {.reduce = WindowReduce::max, .query_weights = weights},
                     attention, ws);
    const auto score = ws.take<float>(stored * n);  // ≥ 1: important for some window query
    reduce_groups(attention, q_heads, n, kv.kv_heads(), GroupReduce::max, params_.shared, score);
    const auto keep = ws.take<std::uint8_t>(n);
    for (index_t h = 0; h < stored; ++h) {
      const auto sh = score.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(n));
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, n - r, n);
      index_t important = 0;
      for (index_t j = 0; j < n - r; ++j) important += sh[static_cast<std::size_t>(j)] >= 1.0f;
      top_k(sh, 0, n - r, std::min(important, cap - r), keep, ws);
      add_head_from_mask(out, keep);
    }
  }

  /// Starts a sequence in `config.capacity` slots (no budget: CORM is budget-free).
  void start(const StreamConfig& config) {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/false);
    index_t limit = slots - 1;  // a free slot must remain for the next token
    if (params_.max_tokens > 0) limit = std::min(limit, params_.max_tokens);
    detail::require(limit >= std::max<index_t>(params_.r, 1), "capacity",
                    detail::cat("room for r (", params_.r, ") tokens and the next one"),
                    config.capacity);
    slots_ = slots;  // nothing changes before every check has passed
    limit_ = limit;
    q_heads_ = config.q_heads;
    live_threshold_ = params_.threshold == CORMThreshold::live;
    const index_t stored = params_.shared ? 1 : config.kv_heads;
    table_.start(stored, slots_);
    last_.assign(static_cast<std::size_t>(stored * slots_), -1);
    step_.assign(static_cast<std::size_t>(slots_), 0.0f);
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
    evicted_.start(stored, params_.shared, slots_);
    t_ = 0;
  }

  /// The slot per KV head where the token at `position` goes (position + 1 is the step t).
  std::span<const token_t> append(std::int64_t position) {
    const auto slots = detail::append_to_slots(table_, append_slots_, position);
    for (index_t h = 0; h < table_.heads(); ++h)
      last_[static_cast<std::size_t>(h * slots_ +
                                     slots[static_cast<std::size_t>(params_.shared ? 0 : h)])] = -1;
    t_ = position + 1;
    return slots;
  }

  /// Records which keys the step's query found important, then evicts the long-term minor ones
  /// (and, over the cap, the longest unimportant).
  Evictions observe(const AttentionRows& rows) {
    detail::check_rows(rows, q_heads_, slots_);
    detail::check_probabilities(rows, table_);
    evicted_.clear();
    const index_t stored = table_.heads(), g = q_heads_ / stored;
    for (index_t h = 0; h < stored; ++h) {
      const float threshold = 1.0f / static_cast<float>(live_threshold_ ? table_.size(h) : t_);
      // The group's maximum: important for any of its query heads.
      reduce_group(rows.data + h * g * rows.head_stride, rows.head_stride, g, slots_,
                   GroupReduce::max, step_.data());
      std::int64_t* last = last_.data() + h * slots_;
      for (index_t s = 0; s < slots_; ++s)
        if (step_[static_cast<std::size_t>(s)] >= threshold) last[s] = t_;
      // Long-term minor keys outside the last r positions leave.
      const std::int64_t recent_from = t_ - params_.r;  // 1-based positions > this are recent
      const std::int64_t stale_before = t_ - params_.w + 1;
      for (index_t s = 0; s < slots_; ++s) {
        const std::int64_t pos = table_.position(h, s);
        if (pos < 0 || pos + 1 > recent_from || last[s] >= stale_before) continue;
        table_.release(h, static_cast<token_t>(s));
        evicted_.push(h, static_cast<token_t>(s));
      }
      while (table_.size(h) > limit_) {  // the cap: the longest unimportant leaves first
        token_t victim = -1;
        for (index_t s = 0; s < slots_; ++s) {
          const std::int64_t pos = table_.position(h, s);
          if (pos < 0 || pos + 1 > recent_from) continue;
          if (victim < 0 || last[s] < last[victim] ||
              (last[s] == last[victim] && pos < table_.position(h, victim)))
            victim = static_cast<token_t>(s);
        }
        table_.release(h, victim);
        evicted_.push(h, victim);
      }
    }
    return evicted_.view();
  }

  index_t slots() const noexcept { return slots_; }
  index_t size(index_t head) const noexcept { return table_.size(params_.shared ? 0 : head); }
  std::int64_t position(index_t head, index_t slot) const noexcept {
    return table_.position(params_.shared ? 0 : head, slot);
  }
  /// The last step at which the key in `slot` was important (−1: never).
  std::int64_t last_important(index_t head, index_t slot) const noexcept {
    return last_[static_cast<std::size_t>((params_.shared ? 0 : head) * slots_ + slot)];
  }

 private:
  Params params_;
  index_t slots_ = 0, limit_ = 0, q_heads_ = 0;
  bool live_threshold_ = false;
  std::int64_t t_ = 0;
  detail::SlotTable table_;
  std::vector<std::int64_t> last_;  ///< per stored head and slot: last important step
  std::vector<float> step_;         ///< one step's group maximum per slot
  std::vector<token_t> append_slots_;
  detail::EvictionList evicted_;
};

}  // namespace kvevict
