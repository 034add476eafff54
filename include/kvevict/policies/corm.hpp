// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief CORM: evict a key once none of the recent queries found it important.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../stream.hpp"
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

/// Every `CORMThreshold`, in the order the command lists them.
constexpr std::array<CORMThreshold, 2> all_values(CORMThreshold) {
  return {CORMThreshold::t, CORMThreshold::live};
}

/// Parameters of `CORM` (the paper's "256+256").
struct CORMParams {
  index_t w = 256;  ///< recent queries: a key is evicted once unimportant for all of the last w
  index_t r = 256;  ///< recent keys, never evicted
  CORMThreshold threshold = CORMThreshold::t;
  /// Extension: a cap on the cache. When over it, the keys whose last important step is the
  /// oldest leave first (ties: the older key). 0: no cap (the engine's capacity still is one).
  index_t max_tokens = 0;
  /// `shared`: one set for all heads, a key important for any query head at all.
  Granularity granularity = Granularity::per_head;
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
class CORM : public OneShot<CORM, CORMParams> {
 public:
  static constexpr std::string_view name = "corm";
  static constexpr PolicyInfo info{
      .summary = "budget-free: evict keys no recent query found important (Dai et al. 2024)",
      .reads = reads_keys | reads_queries | reads_attention_rows,
      .streaming = true,
      .budget_free = true};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::w>("w", "≥ 1", "recent queries a key must stay unimportant for"),
         param<&Params::r>("r", "≥ 0", "recent keys never evicted"),
         param<&Params::threshold>("threshold", "",
                                   "importance threshold: 1/t (t) or 1/|cache| (live)"),
         param<&Params::max_tokens>("max_tokens", "0 or ≥ max(r, 1)",
                                    "cap on the cache, 0 = none (extension)")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.w >= 1, "w", "w >= 1 recent queries", p.w);
    detail::require(p.r >= 0, "r", "r >= 0 recent keys", p.r);
    detail::require(
        p.max_tokens == 0 || p.max_tokens >= std::max<index_t>(p.r, 1), "max_tokens",
        detail::cat("0 (no cap) or at least max(r, 1) (", std::max<index_t>(p.r, 1), ")"),
        p.max_tokens);
  }

  // ---- one-shot (an approximation over the query window) -----------------------------------

  /// CORM's one-shot choice for one row: the last r tokens, then every candidate whose score is
  /// ≥ 1 (important for some window query), at most the cap (the budget, or `max_tokens`).
  struct Rule {
    static constexpr bool reads_scores = true;
    static constexpr bool budget_free = true;
    static constexpr bool absolute_scores = true;  // ≥ 1 means important: never rescaled
    index_t r, max_tokens;
    Protected protect(index_t n, index_t) const noexcept { return {.recent = std::min(r, n)}; }
    index_t cap(index_t n, index_t budget) const noexcept {
      return std::min(max_tokens == 0 ? n : std::min(max_tokens, n), budget);
    }
    void check(index_t n, index_t budget, Protected) const {
      const index_t rr = std::min(r, n);
      if (cap(n, budget) < rr)
        detail::fail("budget", detail::cat("at least r (", rr, ") tokens"), cap(n, budget));
    }
    void pick(const Row& row, std::span<std::uint8_t> keep, Workspace& ws) const {
      index_t important = 0;
      for (index_t j = 0; j < row.last(); ++j)
        important += row.score[static_cast<std::size_t>(j)] >= 1.0f;
      kernels::top_k(row.score, 0, row.last(),
                     std::min(important, cap(row.n, row.budget) - row.marked), keep, ws);
    }
  };

  Rule rule(index_t) const noexcept { return {params_.r, params_.max_tokens}; }

  /// `max_i (t_i · A_i[j])` over the window's queries (query i at position n − w + i, t_i its
  /// 1-based position): ≥ 1 when key j is important for some query. Rows come reduced by max
  /// over each group (or every head), as the streaming form's "any query head".
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    const index_t n = kv.tokens(), w = queries.window();
    const auto weights = ws.take<float>(w);
    for (index_t i = 0; i < w; ++i)
      weights[static_cast<std::size_t>(i)] = static_cast<float>(n - w + i + 1);
    return kernels::attention_scores(
        kv, queries, {.reduce = WindowReduce::max, .query_weights = weights}, GroupReduce::max, ws);
  }

  // ---- streaming (budget-free) -------------------------------------------------------------

  struct State {
    std::vector<std::int64_t> last;  ///< per stored head and slot: last important step
    std::vector<float> step;         ///< one step's group maximum per slot
    index_t limit = 0;               ///< live tokens allowed per head (cap and capacity − 1)
    std::int64_t t = 0;              ///< the current step (1-based position of the newest)
    bool shared = false;
    /// The last step at which the key in `slot` of KV head `head` was important (−1: never).
    std::int64_t last_important(index_t head, index_t slot) const noexcept {
      return last[static_cast<std::size_t>(shared ? 0 : head) * step.size() +
                  static_cast<std::size_t>(slot)];
    }
  };
  static constexpr bool reads_rows = true;

  /// A new sequence in `config.capacity` slots (no budget: CORM is budget-free).
  Stream<CORM> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/false);
    detail::require(limit_for(slots) >= std::max<index_t>(params_.r, 1), "capacity",
                    detail::cat("room for r (", params_.r, ") tokens and the next one"),
                    config.capacity);
    return {.slots = slots, .shared = one_set(params_.granularity), .max_evictions = slots};
  }
  State state(const StreamCore& core) const {
    return {std::vector<std::int64_t>(static_cast<std::size_t>(core.stored() * core.slots()), -1),
            std::vector<float>(static_cast<std::size_t>(core.slots()), 0.0f),
            limit_for(core.slots()), 0, one_set(params_.granularity)};
  }
  /// The new key has never been important; the step t is its 1-based position.
  void appended(State& st, StreamCore& core, std::span<const token_t> slots) const noexcept {
    for (index_t h = 0; h < core.stored(); ++h)
      st.last[static_cast<std::size_t>(h * core.slots() + slots[static_cast<std::size_t>(h)])] = -1;
    st.t = core.last_position() + 1;
  }
  /// Records which keys the step's query found important, then evicts the long-term minor ones
  /// (and, over the cap, the longest unimportant).
  void observed(State& st, StreamCore& core, const AttentionRows& rows) const noexcept {
    const index_t slots = core.slots(), g = core.q_heads() / core.stored();
    const bool live_threshold = params_.threshold == CORMThreshold::live;
    constexpr index_t chunk = 1024;  // one L1-resident chunk at a time: a single pass per step
    for (index_t h = 0; h < core.stored(); ++h) {
      const float threshold = 1.0f / static_cast<float>(live_threshold ? core.size(h) : st.t);
      std::int64_t* last = st.last.data() + h * slots;
      const std::int64_t* position = core.positions(h).data();
      // Long-term minor keys outside the last r positions leave.
      const std::int64_t recent_from = st.t - params_.r;  // 1-based positions > this are recent
      const std::int64_t stale_before = st.t - params_.w + 1;
      for (index_t c0 = 0; c0 < slots; c0 += chunk) {
        const index_t count = std::min(chunk, slots - c0);
        // The group's maximum: important for any of its query heads.
        kernels::reduce_group(rows.data + h * g * rows.head_stride + c0, rows.head_stride, g, count,
                              GroupReduce::max, st.step.data());
        for (index_t i = 0; i < count; ++i) {
          const index_t s = c0 + i;
          if (st.step[static_cast<std::size_t>(i)] >= threshold) last[s] = st.t;
          const std::int64_t pos = position[s];
          if (pos < 0 || pos + 1 > recent_from || last[s] >= stale_before) continue;
          core.evict(h, static_cast<token_t>(s));
        }
      }
      const auto old_enough = [&](index_t s) { return core.position(h, s) + 1 <= recent_from; };
      while (core.size(h) > st.limit)  // the cap: the longest unimportant leaves first
        core.evict(h, core.lowest(h, last, old_enough));
    }
  }

 private:
  index_t limit_for(index_t slots) const noexcept {
    const index_t limit = slots - 1;  // a free slot must remain for the next token
    return params_.max_tokens > 0 ? std::min(limit, params_.max_tokens) : limit;
  }
};

}  // namespace kvevict
