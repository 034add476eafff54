// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief H2O: heavy hitters by accumulated attention, plus a recent window.

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

/// Parameters of `H2O`.
struct H2OParams {
  /// R: the last R tokens are always kept; the heavy budget is B − R. −1 means B / 2 (rounded
  /// down), the paper's equal split of heavy hitters and recent tokens.
  index_t recent = -1;
  GroupReduce reduce = GroupReduce::mean;  ///< over a KV head's query heads, per query.
  bool shared = false;                     ///< one set for all heads (reduced over all heads).
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
class H2O {
 public:
  static constexpr std::string_view name = "h2o";
  using Params = H2OParams;

  H2O() : H2O(Params{}) {}
  explicit H2O(const Params& p) : params_(p) {
    detail::require(p.recent >= -1, "recent", "recent >= 0 (or -1 for half the budget)", p.recent);
  }
  const Params& params() const noexcept { return params_; }

  /// R for a budget of `b` tokens.
  index_t recent_for(index_t b) const noexcept {
    return params_.recent < 0 ? b / 2 : params_.recent;
  }

  /// One-shot selection: last R + top (B − R) by accumulated attention of the window's queries.
  /// Complexity: one `window_attention` (or, for `reduce = max`, one per query, since the
  /// maximum over heads must be taken per query) + O(n) per head; scratch from `ws`.
  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    check_window(kv, queries);
    const index_t b0 = budget.resolve(kv.tokens());
    const index_t r = recent_for(b0);
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared, r, "recent");
    if (b == 0) return;
    Workspace::Frame frame(ws);
    const index_t n = kv.tokens();
    const auto acc = accumulate(kv, queries, ws);
    const auto keep = ws.take<std::uint8_t>(n);
    for (index_t h = 0; h < out.stored_heads(); ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, n - r, n);
      top_k(acc.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(n)), 0, n - r,
            b - r, keep, ws);
      add_head_from_mask(out, keep);
    }
  }

  /// The accumulated attention `acc` of every stored head ([stored heads][n], from `ws`): the
  /// sum over the window's queries of the per-query group reduction. Valid in the caller's frame.
  template <Element T>
  std::span<float> accumulate(const KVCache<T>& kv, const QueryWindow<T>& queries,
                              Workspace& ws) const {
    const index_t n = kv.tokens(), q_heads = queries.q_heads();
    const index_t stored = params_.shared ? 1 : kv.kv_heads();
    const auto acc = ws.take<float>(stored * n);
    if (params_.reduce != GroupReduce::max) {  // linear: sum over queries, then reduce
      const auto attention = ws.take<float>(q_heads * n);
      window_attention(kv, queries, {.reduce = WindowReduce::sum}, attention, ws);
      reduce_groups(attention, q_heads, n, kv.kv_heads(), params_.reduce, params_.shared, acc);
      return acc;
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    const auto attention = ws.take<float>(q_heads * n);
    const auto reduced = ws.take<float>(stored * n);
    for (index_t i = 0; i < queries.window(); ++i) {  // query i sees tokens 0 … m − 1
      const index_t m = n - queries.window() + i + 1;
      const auto row = attention.first(static_cast<std::size_t>(q_heads * m));
      const auto red = reduced.first(static_cast<std::size_t>(stored * m));
      window_attention(kv.with_tokens(m), queries.sub(i, 1), {}, row, ws);
      reduce_groups(row, q_heads, m, kv.kv_heads(), GroupReduce::max, params_.shared, red);
      for (index_t h = 0; h < stored; ++h)
        for (index_t j = 0; j < m; ++j)
          acc[static_cast<std::size_t>(h * n + j)] += red[static_cast<std::size_t>(h * m + j)];
    }
    return acc;
  }

  /// Starts a sequence keeping `budget` tokens per KV head (R of them recent).
  void start(const StreamConfig& config) {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, recent_for(config.budget), "recent");
    slots_ = slots;  // nothing changes before every check has passed
    budget_ = config.budget;
    recent_ = recent_for(budget_);
    q_heads_ = config.q_heads;
    const index_t stored = params_.shared ? 1 : config.kv_heads;
    table_.start(stored, slots_);
    acc_.assign(static_cast<std::size_t>(stored * slots_), 0.0f);
    step_.assign(static_cast<std::size_t>(slots_), 0.0f);
    recent_window_.start(stored, slots_, /*sinks=*/0, recent_);
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
    evicted_.start(stored, params_.shared, 1);
  }

  /// The slot per KV head where the token at `position` goes; it joins the recent window with
  /// acc 0, and the token R places older leaves the window (and starts competing).
  std::span<const token_t> append(std::int64_t position) {
    const auto slots = detail::append_to_slots(table_, append_slots_, position);
    for (index_t h = 0; h < table_.heads(); ++h) {
      const token_t s = slots[static_cast<std::size_t>(params_.shared ? 0 : h)];
      acc_[static_cast<std::size_t>(h * slots_ + s)] = 0.0f;
      recent_window_.on_append(h, s);
    }
    recent_window_.next_token();
    return slots;
  }

  /// Adds the step's attention to `acc`; evicts the non-recent argmin when over budget.
  Evictions observe(const AttentionRows& rows) {
    detail::check_rows(rows, q_heads_, slots_);
    detail::check_probabilities(rows, table_);
    evicted_.clear();
    const index_t stored = table_.heads(), g = q_heads_ / stored;
    float* const step = step_.data();
    for (index_t h = 0; h < stored; ++h) {
      float* acc = acc_.data() + h * slots_;
      // Free slots accumulate whatever the engine left there; `append` resets a slot's acc.
      reduce_group(rows.data + h * g * rows.head_stride, rows.head_stride, g, slots_,
                   params_.reduce, step);
      for (index_t s = 0; s < slots_; ++s) acc[s] += step[s];
      if (table_.size(h) <= budget_) continue;
      token_t victim = -1;
      for (index_t s = 0; s < slots_; ++s) {
        if (!table_.live(h, s) || recent_window_.protects(h, s)) continue;
        if (victim < 0 || acc[s] < acc[victim] ||
            (acc[s] == acc[victim] && table_.position(h, s) < table_.position(h, victim)))
          victim = static_cast<token_t>(s);
      }
      table_.release(h, victim);
      evicted_.push(h, victim);
    }
    return evicted_.view();
  }

  index_t slots() const noexcept { return slots_; }
  index_t size(index_t head) const noexcept { return table_.size(stored(head)); }
  std::int64_t position(index_t head, index_t slot) const noexcept {
    return table_.position(stored(head), slot);
  }
  /// The accumulated attention of a live slot (for inspection and tests).
  float score(index_t head, index_t slot) const noexcept {
    return acc_[static_cast<std::size_t>(stored(head) * slots_ + slot)];
  }

 private:
  index_t stored(index_t head) const noexcept { return params_.shared ? 0 : head; }

  Params params_;
  index_t slots_ = 0, budget_ = 0, recent_ = 0, q_heads_ = 0;
  detail::SlotTable table_;
  std::vector<float> acc_;
  std::vector<float> step_;           ///< one step's group-reduced attention per slot
  detail::Protection recent_window_;  ///< the last R tokens of each stored head
  std::vector<token_t> append_slots_;
  detail::EvictionList evicted_;
};

}  // namespace kvevict
