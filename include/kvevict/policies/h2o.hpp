// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief H2O: heavy hitters by accumulated attention, plus a recent window.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/reduce.hpp"
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

/// Parameters of `H2O`.
struct H2OParams {
  /// R: the last R tokens are always kept; the heavy budget is B − R. None (the default) means
  /// B / 2 (rounded down), the paper's equal split of heavy hitters and recent tokens.
  std::optional<index_t> recent = std::nullopt;
  GroupReduce reduce = GroupReduce::mean;  ///< over a KV head's query heads, per query.
  Granularity granularity = Granularity::per_head;
};

/// H2O, Heavy-Hitter Oracle (Zhang et al., arXiv 2306.14048, §3.2 Algorithm 1 "H2 eviction";
/// upstream FMInference/H2O `h2o_hf/utils_real_drop/modify_llama.py`, `H2OKVCache_LayerWise`).
///
/// Each KV head accumulates, for every query that has run, the attention that query gave each
/// key (reduced over the head's GQA group, per query): `acc[j] += reduce_g A[t, j]`, a plain
/// sum in fp32. The last R tokens are kept; the others compete on `acc`.
///
/// - **Streaming** (the paper's per-step causal greedy eviction, pinned): token t joins with
///   acc 0, its query attends over the cache (itself included), the row is added to `acc`,
///   and if more than B tokens are live the non-recent token with the least `acc` leaves (ties:
///   the older). A token that left never returns. O(q_heads · slots) per step — one pass over
///   the attention row — and no allocation after `start`.
/// - **One-shot** (`select`): `acc` summed over the given window's queries (causal), keep the
///   last R and the top B − R of the others (ties: the more recent).
///
/// Deviations from upstream, on purpose: upstream accumulates in fp16 (increments below the
/// fp16 step of a large sum are lost) and has no GQA support; here fp32 and a per-query group
/// reduction. Upstream keeps `top-k` of the non-recent tokens each step, which in steady state
/// is the same as evicting the argmin.
class H2O : public OneShot<H2O, H2OParams> {
 public:
  static constexpr std::string_view name = "h2o";
  static constexpr PolicyInfo info{
      .summary = "accumulated attention heavy hitters + recent window (Zhang et al. 2023)",
      .reads = reads_keys | reads_queries | reads_attention_rows,
      .streaming = true};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>({param<&Params::recent>(
        "recent", "≥ 0, or none", "recent window R (none: half the budget)")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(!p.recent || *p.recent >= 0, "recent", "recent >= 0 (or none: half the budget)",
                    p.recent.value_or(0));
  }

  /// R for a budget of `b` tokens.
  index_t recent_for(index_t b) const noexcept { return params_.recent.value_or(b / 2); }

  // ---- one-shot: accumulated attention → the last R + TopK ---------------------------------

  /// The last R tokens protected (R depends on the budget), the top of `acc` for the rest.
  struct Rule : TopK {
    const H2O* policy;
    Protected protect(index_t, index_t budget) const noexcept {
      return {.recent = policy->recent_for(budget)};
    }
  };
  Rule rule(index_t) const noexcept { return {{}, this}; }

  /// The accumulated attention `acc`: the sum over the window's queries of the per-query group
  /// reduction. For `reduce = mean / sum` that is a linear map of the query heads' sums
  /// (`[q_heads][n]` rows, reduced by `choose`); for `max` the maximum must be taken per query,
  /// so the rows come already reduced for granularity `g` (one `window_attention` per query).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity g,
               Workspace& ws) const {
    if (params_.reduce != GroupReduce::max)  // linear: sum over queries, then reduce
      return kernels::attention_scores(kv, queries, {.reduce = WindowReduce::sum}, params_.reduce,
                                       ws);
    const index_t n = kv.tokens(), q_heads = queries.q_heads();
    Scores out{
        .tokens = n, .kv_heads = kv.kv_heads(), .reduce = params_.reduce, .layer = kv.layer()};
    const bool shared = one_set(g);
    const index_t stored = shared ? 1 : kv.kv_heads();
    const auto acc = ws.take<float>(stored * n);
    std::fill(acc.begin(), acc.end(), 0.0f);
    const auto attention = ws.take<float>(q_heads * n);
    const auto reduced = ws.take<float>(stored * n);
    for (index_t i = 0; i < queries.window(); ++i) {  // query i sees tokens 0 … m − 1
      const index_t m = n - queries.window() + i + 1;
      const auto row = attention.first(static_cast<std::size_t>(q_heads * m));
      const auto red = reduced.first(static_cast<std::size_t>(stored * m));
      kernels::window_attention(kv.with_tokens(m), queries.sub(i, 1), {}, row, ws);
      kernels::reduce_groups(row, q_heads, m, kv.kv_heads(), GroupReduce::max, shared, red);
      for (index_t h = 0; h < stored; ++h)
        for (index_t j = 0; j < m; ++j)
          acc[static_cast<std::size_t>(h * n + j)] += red[static_cast<std::size_t>(h * m + j)];
    }
    out.values = acc;
    out.rows = stored;
    out.kind = shared ? ScoreRows::shared : ScoreRows::kv_heads;
    return out;
  }

  // ---- streaming: accumulate each step's row, evict the non-recent argmin ------------------

  struct State {
    std::vector<float> acc;   ///< per stored head and slot: accumulated attention
    std::vector<float> step;  ///< one step's group-reduced attention per slot
    bool shared = false;
    /// The accumulated attention of `slot` of KV head `head`.
    float score(index_t head, index_t slot) const noexcept {
      return acc[static_cast<std::size_t>(shared ? 0 : head) * step.size() +
                 static_cast<std::size_t>(slot)];
    }
  };
  static constexpr bool reads_rows = true;

  /// A new sequence keeping `config.budget` tokens per KV head (R of them recent).
  Stream<H2O> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, recent_for(config.budget), "recent");
    return {.slots = slots,
            .shared = one_set(params_.granularity),
            .protect = {.recent = recent_for(config.budget)}};
  }
  State state(const StreamCore& core) const {
    return {std::vector<float>(static_cast<std::size_t>(core.stored() * core.slots()), 0.0f),
            std::vector<float>(static_cast<std::size_t>(core.slots()), 0.0f),
            one_set(params_.granularity)};
  }
  /// The new token joins the recent window with acc 0.
  void appended(State& st, StreamCore& core, std::span<const token_t> slots) const noexcept {
    for (index_t h = 0; h < core.stored(); ++h)
      st.acc[static_cast<std::size_t>(h * core.slots() + slots[static_cast<std::size_t>(h)])] = 0;
  }
  /// Adds the step's attention to `acc`; evicts the non-recent argmin when over budget.
  ///
  /// One pass over the slots in chunks that stay in L1: the group reduction of a chunk, its
  /// addition to `acc` and the minimum over the evictable slots (flag 0) — then only the chunks
  /// holding that minimum are scanned again for the oldest such slot. The same arithmetic, and
  /// so the same evictions, as reducing, adding and searching in three passes (issue 21: the
  /// step's cost against the attention step).
  void observed(State& st, StreamCore& core, const AttentionRows& rows) const noexcept {
    const index_t slots = core.slots(), g = core.q_heads() / core.stored();
    constexpr index_t chunk = 1024;
    float* const step = st.step.data();
    const float inf = std::numeric_limits<float>::infinity();
    for (index_t h = 0; h < core.stored(); ++h) {
      float* acc = st.acc.data() + h * slots;
      const std::uint8_t* flag = core.flags(h);
      const bool over = core.size(h) > core.budget();
      float best = inf;
      index_t first = 0, last = 0;  // the chunks [first, last] hold `best`
      // Free slots accumulate whatever the engine left there; `append` resets a slot's acc.
      for (index_t c0 = 0; c0 < slots; c0 += chunk) {
        const index_t count = std::min(chunk, slots - c0);
        kernels::reduce_group(rows.data + h * g * rows.head_stride + c0, rows.head_stride, g, count,
                              params_.reduce, step);
        float m = inf;
        for (index_t s = 0; s < count; ++s) {
          const float a = acc[c0 + s] + step[s];
          acc[c0 + s] = a;
          m = std::min(m, flag[c0 + s] == 0 ? a : inf);
        }
        if (m < best) {
          best = m;
          first = last = c0;
        } else if (m == best && m != inf) {
          last = c0;
        }
      }
      if (!over) continue;
      token_t victim =
          best < inf ? core.lowest_eligible(h, acc, best, first, std::min(slots, last + chunk))
                     : token_t{-1};
      if (victim < 0)  // nothing finite to take: the general rule (and its −1 when none)
        victim = core.lowest(h, acc, [&](index_t s) { return !core.protects(h, s); });
      core.evict(h, victim);
    }
  }
};

}  // namespace kvevict
