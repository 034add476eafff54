// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief SnapKV: the observation window's pooled attention picks each head's prefix tokens.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/pool.hpp"
#include "../kernels/reduce.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `SnapKV`. Defaults: the authors' LongBench configuration (w = 32, kernel 7,
/// max pooling); kvpress uses w = 64, kernel 5, avg.
struct SnapKVParams {
  index_t window = 32;                     ///< w: the last w queries, always kept.
  index_t kernel = 7;                      ///< pooling kernel over the scores.
  Pool pool = Pool::max;                   ///< max or avg pooling.
  GroupReduce reduce = GroupReduce::mean;  ///< over a KV head's query heads.
  Granularity granularity = Granularity::per_head;
  bool ada = false;              ///< AdaKV head-adaptive budgets (ragged per head).
  double alpha_safeguard = 0.2;  ///< AdaKV: each head keeps ≥ this share of the mean.
  AdaSafeguard safeguard = AdaSafeguard::kvpress;  ///< AdaKV: whose safeguard rule
};

namespace detail {
inline void check_snapkv(const SnapKVParams& p) {
  require(p.window >= 1, "window", "window >= 1", p.window);
  require(p.kernel >= 1, "kernel", "kernel >= 1", p.kernel);
  require(p.alpha_safeguard >= 0.0 && p.alpha_safeguard <= 1.0, "alpha_safeguard",
          "a fraction in [0, 1]", p.alpha_safeguard);
}

/// The parameters of an observation window scored SnapKV's way (SnapKV, CriticalKV).
template <class Params>
std::vector<Parameter<Params>> window_parameters() {
  return {param<&Params::window>("window", "≥ 1", "observation window: the last queries, kept"),
          param<&Params::kernel>("kernel", "≥ 1", "pooling kernel over the window's scores"),
          param<&Params::pool>("pool", "", "pooling over neighbouring tokens")};
}

/// AdaKV's parameters (`ada`, `alpha_safeguard`, `safeguard`).
template <class Params>
std::vector<Parameter<Params>> adakv_parameters() {
  return {param<&Params::ada>("ada", "", "AdaKV head-adaptive budgets"),
          param<&Params::alpha_safeguard>("alpha_safeguard", "[0, 1]",
                                          "AdaKV: minimum share of the budget per head"),
          param<&Params::safeguard>("safeguard", "",
                                    "AdaKV safeguard rule (kvpress's or the AdaKV repository's)")};
}

/// SnapKV's scores of the prefix [0, n − w) for every query head ([q_heads][n] floats from
/// `ws`; the window's entries are not written): the window's mean attention, pooled over
/// tokens. Shared by SnapKV and CriticalKV.
template <Element T>
std::span<float> snapkv_scores(const KVCache<T>& kv, const QueryWindow<query_type<T>>& window,
                               index_t kernel, Pool pool, Workspace& ws) {
  const index_t n = kv.tokens(), w = window.window(), prefix = n - w;
  const index_t q_heads = window.q_heads();
  const auto attention = ws.take<float>(q_heads * n);
  kernels::window_attention(kv, window, {.reduce = WindowReduce::mean, .causal = true}, attention,
                            ws);
  const auto pooled = ws.take<float>(q_heads * n);
  for (index_t h = 0; h < q_heads; ++h) {
    kernels::pool1d(
        attention.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(prefix)),
        pooled.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(prefix)), kernel,
        pool, ws);
    std::fill_n(pooled.data() + h * n + prefix, w, 0.0f);  // protected: never ranked
  }
  return pooled;
}
}  // namespace detail

/// What SnapKV and CriticalKV share beyond their scores: the observation window — the last w
/// tokens kept outright, at least w queries required — and AdaKV's head budgets. A mixin for a
/// policy P whose parameters have `window`, `ada`, `alpha_safeguard` and `safeguard`.
template <class P>
class ObservationWindow {
 public:
  Protected protect(index_t) const noexcept {
    return {.recent = window_params().window, .recent_name = "window"};
  }
  std::optional<AdaptiveBudgets> adaptive() const {
    if (!window_params().ada) return std::nullopt;
    return AdaptiveBudgets{.alpha = window_params().alpha_safeguard,
                           .safeguard = window_params().safeguard};
  }
  template <Element T>
  void check_inputs(const KVCache<T>&, const QueryWindow<query_type<T>>& queries) const {
    if (queries.window() < window_params().window)
      detail::fail("queries.window",
                   detail::cat("at least the policy's window (", window_params().window, ")"),
                   queries.window());
  }

 private:
  const auto& window_params() const noexcept { return static_cast<const P&>(*this).params(); }
};

/// SnapKV (Li et al., arXiv 2404.14469, §4.2 "Efficient clustering via pooling", Algorithm 1;
/// upstream FasterDecoding/SnapKV `snapkv/monkeypatch/snapkv_utils.py`, `update_kv`).
///
/// For each query head: `s[j] = mean_i A[i, j]` over the last w queries (causal inside the
/// window) for the prefix j < n − w; pooled over j (out-of-range neighbours ignored by max,
/// zero-padded by avg); reduced over the KV head's group (mean). Keeps the window [n − w, n)
/// plus the top B − w prefix tokens (ties: the more recent) — `TopK` with the window protected.
/// Per head, or shared (reduced over all query heads). With `ada`, AdaKV's head-adaptive
/// budgets (Feng et al., arXiv 2407.11550; see `choose`).
///
/// Deviations from upstream, on purpose: upstream expands KV heads to query heads (each query
/// head keeps its own set, losing GQA's memory saving); here scores are reduced over the group
/// first, as kvpress does. Upstream leaves a prompt shorter than its capacity untouched; here
/// any B ≥ n keeps everything. Upstream's top-k order on ties is unspecified; here the more
/// recent token wins.
///
/// - Complexity: one `window_attention` (2·w·n·d FLOPs per query head) + O(q_heads · n · kernel)
///   pooling + O(n) selection per head. Scratch from `ws` (see `window_attention`), plus
///   2 · q_heads · n floats; no allocation once `ws` and `out` are warm.
/// - Errors: `queries.window` < w; B < w (the window cannot be kept) unless B ≥ n.
class SnapKV : public OneShot<SnapKV, SnapKVParams>, public ObservationWindow<SnapKV> {
 public:
  static constexpr std::string_view name = "snapkv";
  static constexpr PolicyInfo info{
      .summary = "pooled observation-window attention (Li et al. 2024)",
      .reads = reads_keys | reads_queries};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        join<Params>({detail::window_parameters<Params>(), detail::adakv_parameters<Params>()}));
  }

  using OneShot::OneShot;
  static void check(const Params& p) { detail::check_snapkv(p); }

  TopK rule(index_t) const noexcept { return {}; }

  /// The pooled window scores of every query head over the prefix [0, n − w) (`[q_heads][n]`
  /// from `ws`, valid in the caller's frame; the window is protected and not scored).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    check_inputs(kv, queries);
    const auto s =
        detail::snapkv_scores(kv, queries.last(params_.window), params_.kernel, params_.pool, ws);
    return Scores::of_query_heads(s, queries.q_heads(), kv, params_.reduce, protect(kv.tokens()));
  }
};

}  // namespace kvevict
