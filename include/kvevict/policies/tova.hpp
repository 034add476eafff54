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

/// Parameters of `TOVA`.
struct TOVAParams {
  /// `shared` (the default, the paper's layer-wise policy): one set for all heads, ranked by the
  /// mean over all query heads. `per_head`: each KV head ranked by the mean over its group.
  Granularity granularity = Granularity::shared;
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
class TOVA : public OneShot<TOVA, TOVAParams> {
 public:
  static constexpr std::string_view name = "tova";
  static constexpr PolicyInfo info{
      .summary = "last query's head-mean attention, shared set (Oren et al. 2024)",
      .reads = reads_keys | reads_queries | reads_attention_rows,
      .streaming = true};

  using OneShot::OneShot;

  // ---- one-shot: score → TopK --------------------------------------------------------------

  TopK rule(index_t) const noexcept { return {}; }

  /// The last query's attention per query head (`[q_heads][n]` from `ws`), reduced by mean.
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    return kernels::attention_scores(kv, queries.last(1), {.reduce = WindowReduce::sum},
                                     GroupReduce::mean, ws);
  }

  // ---- streaming: evict the argmin of each step's attention --------------------------------

  /// One step's head-summed attention per slot (scratch).
  struct State {
    std::vector<float> score;
  };
  static constexpr bool reads_rows = true;

  /// A new sequence keeping `config.budget` tokens per KV head in `budget + 1` slots.
  Stream<TOVA> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    return {.slots = detail::check_stream_config(config, /*needs_budget=*/true),
            .shared = one_set(params_.granularity)};
  }
  State state(const StreamCore& core) const {
    return {std::vector<float>(static_cast<std::size_t>(core.slots()), 0.0f)};
  }
  void appended(State&, StreamCore&, std::span<const token_t>) const noexcept {}

  /// Evicts, per stored head, the live slot with the least head-mean attention when more than
  /// `budget` are live (ties: the older position goes).
  void observed(State& st, StreamCore& core, const AttentionRows& rows) const noexcept {
    const index_t g = core.q_heads() / core.stored();
    for (index_t h = 0; h < core.stored(); ++h) {
      if (core.size(h) <= core.budget()) continue;
      // The group's sum ranks like its mean.
      kernels::reduce_group(rows.data + h * g * rows.head_stride, rows.head_stride, g, core.slots(),
                            GroupReduce::sum, st.score.data());
      core.evict(h, core.lowest(h, st.score.data(), [](index_t) { return true; }));
    }
  }
};

}  // namespace kvevict
