// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief TOVA: keep the tokens the newest query attends to most.

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

/// Parameters of `TOVA`.
struct TOVAParams {
  /// One set for all heads, ranked by the mean over all query heads (the paper's layer-wise
  /// policy, the default). `false`: per KV head, ranked by the mean over its group.
  bool shared = true;
};

/// TOVA, Token Omission Via Attention (Oren et al., arXiv 2401.06104, §3 "TOVA"; upstream
/// schwartz-lab-NLP/TOVA `src/tova_cache.py`, `TOVACache.reduce`).
///
/// Score = the attention of the **last** query only, averaged over all query heads: one shared
/// set. One-shot: keep the top B (ties: the more recent). Streaming: at every step, the new token
/// included among the candidates, if more than B tokens are live, evict the argmin of that step's
/// head-mean attention (ties: the older goes). Nothing is protected, as upstream.
///
/// - one-shot: one `window_attention` of the last query (2·n·d FLOPs per query head) + O(n)
///   selection; scratch from `ws`; no allocation once warm.
/// - streaming: `start` allocates O(kv_heads · slots); `observe` is O(q_heads · slots), no
///   allocation.
class TOVA {
 public:
  static constexpr std::string_view name = "tova";
  using Params = TOVAParams;

  TOVA() : TOVA(Params{}) {}
  explicit TOVA(const Params& p) : params_(p) {}
  const Params& params() const noexcept { return params_; }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared);
    if (b == 0) return;
    Workspace::Frame frame(ws);
    const index_t n = kv.tokens(), q_heads = queries.q_heads();
    const auto attention = ws.take<float>(q_heads * n);
    window_attention(kv, queries.last(1), {.reduce = WindowReduce::sum}, attention, ws);
    const auto scores = ws.take<float>(out.stored_heads() * n);
    reduce_groups(attention, q_heads, n, kv.kv_heads(), GroupReduce::mean, params_.shared, scores);
    const auto keep = ws.take<std::uint8_t>(n);
    for (index_t h = 0; h < out.stored_heads(); ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      top_k(scores.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(n)), 0, n, b,
            keep, ws);
      add_head_from_mask(out, keep);
    }
  }

  /// Starts a sequence keeping `budget` tokens per KV head in `budget + 1` slots.
  void start(const StreamConfig& config) {
    slots_ = detail::check_stream_config(config, /*needs_budget=*/true);
    budget_ = config.budget;
    q_heads_ = config.q_heads;
    const index_t stored = params_.shared ? 1 : config.kv_heads;
    table_.start(stored, slots_);
    score_.assign(static_cast<std::size_t>(slots_), 0.0f);
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
    evicted_.start(stored, params_.shared, 1);
  }

  /// The slot per KV head where the token at `position` goes.
  std::span<const token_t> append(std::int64_t position) {
    return detail::append_to_slots(table_, append_slots_, position);
  }

  /// Evicts, per stored head, the live slot with the least head-mean attention when more than
  /// `budget` are live (ties: the older position goes).
  Evictions observe(const AttentionRows& rows) {
    detail::check_rows(rows, q_heads_, slots_);
    detail::check_probabilities(rows, table_);
    evicted_.clear();
    const index_t stored = table_.heads(), g = q_heads_ / stored;
    float* const score = score_.data();
    for (index_t h = 0; h < stored; ++h) {
      if (table_.size(h) <= budget_) continue;
      // The group's sum ranks like its mean.
      reduce_group(rows.data + h * g * rows.head_stride, rows.head_stride, g, slots_,
                   GroupReduce::sum, score);
      token_t victim = -1;
      for (index_t s = 0; s < slots_; ++s) {
        if (!table_.live(h, s)) continue;
        if (victim < 0 || score[s] < score[victim] ||
            (score[s] == score[victim] && table_.position(h, s) < table_.position(h, victim)))
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

 private:
  index_t stored(index_t head) const noexcept { return params_.shared ? 0 : head; }

  Params params_;
  index_t slots_ = 0, budget_ = 0, q_heads_ = 0;
  detail::SlotTable table_;
  std::vector<float> score_;  ///< one step's head-summed attention per slot
  std::vector<token_t> append_slots_;
  detail::EvictionList evicted_;
};

}  // namespace kvevict
