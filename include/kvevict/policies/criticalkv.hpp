// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief CriticalKV: attention first, then attention weighted by how far each value can move
/// the layer's output.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../error.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kernels/value_norm.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../output_projection.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"
#include "snapkv.hpp"

namespace kvevict {

/// Parameters of `CriticalKV`. The base scorer is SnapKV with the authors' kvpress settings.
struct CriticalKVParams {
  index_t window = 64;                     ///< SnapKV observation window, always kept.
  index_t kernel = 5;                      ///< SnapKV pooling kernel.
  Pool pool = Pool::avg;                   ///< SnapKV pooling.
  GroupReduce reduce = GroupReduce::mean;  ///< GQA reduction of the attention scores.
  double first_stage_ratio = 0.5;          ///< share of the budget chosen by attention alone.
  double epsilon = 1e-4;                   ///< added to the mean attention before weighting.
  NormKind norm = NormKind::l1;  ///< ‖V W_o‖₁ (the paper's bound) or ‖V W_o‖₂.
  bool ada = false;              ///< AdaKV head-adaptive budgets.
  double alpha_safeguard = 0.2;  ///< AdaKV: each head keeps ≥ this share of the mean.
  AdaSafeguard safeguard = AdaSafeguard::kvpress;  ///< AdaKV: whose safeguard rule
  Granularity granularity = Granularity::per_head;
};

/// CriticalKV (Feng et al., arXiv 2502.03805, §3 "output perturbation" Theorems 3.3–3.5 and
/// Algorithm 1; upstream NVIDIA/kvpress `kvpress/presses/criticalkv_press.py`, by the paper's
/// author). Evicting token j perturbs head h's contribution to the layer output by at most
/// about `A[j] · ‖V_j W_o^h‖₁`, so after a first stage by attention the rest of the budget goes
/// to the largest such products.
///
/// - Base scores s: SnapKV's window means (pooled, GQA mean) over the prefix [0, n − w).
/// - Projected value norms `N_h[j] = ‖V_j · W_o^h‖₁` per query head, mean over the group.
/// - Budget B per KV head: the window [n − w, n) is always kept. Stage 1: the top
///   `max(0, ⌊first_stage_ratio · B⌋ − w)` prefix tokens by s. Stage 2: the rest of B by
///   `(s + ε) · N` among the remaining prefix tokens (ties: the more recent).
/// - `norm = l2`: `‖V_j W_o^h‖₂ = sqrt(v_jᵀ G_h v_j)` with G_h = W_o^h W_o^hᵀ, computed once when
///   the policy is built.
/// - `ada`: AdaKV budgets (see `AdaptiveBudgets`) from the base scores: head h gets B_h tokens,
///   summing to kv_heads · B; the selection is then ragged per head. With kvpress's safeguard
///   (the default, `criticalkv_press.py` `CriticalAdaKVPress` at commit 8bb29b9) stage 1 takes
///   `max(int(alpha · B), ⌊fp32(ratio · B_h)⌋)` tokens, window included: the safeguard tokens
///   are forced through both stages as kvpress forces them (it sets them to the float maximum,
///   and `(max + ε) · N` stays in the top). `safeguard = adakv`: stage 1 is `⌊ratio · B_h⌋`.
///
/// Deviations from upstream, on purpose: upstream forces the window in through stage 1 (SnapKV
/// pads it with max + 1), so when ⌊ratio · B⌋ < w some window tokens can lose in stage 2; here
/// the window is always kept and stage 1 takes what is left of ⌊ratio · B⌋. Upstream computes
/// stage 1 of the non-adaptive press as `int((1 − cr) · n · ratio)` from a compression ratio;
/// here the budget is in tokens, so `⌊ratio · B⌋`. Upstream's CriticalAdaKV sums head budgets
/// over the batch (correct for batch 1 only); here each sequence is its own call. A safeguard
/// token whose projected value norm is 0 loses upstream's protection in stage 2 (`max · 0`);
/// here it keeps it.
///
/// - Holds a *view* of the layer's W_o (it must outlive the policy); with `norm = l2` owns the
///   Gram matrices (q_heads · d² floats, computed in O(q_heads · d² · hidden) at construction).
/// - Complexity: SnapKV's scoring + the norms (2·(n − w)·d·hidden FLOPs per query head for L1,
///   2·(n − w)·d² for L2) + O(n) selection per head. Scratch from `ws`; no allocation once warm.
/// - Errors: W_o that does not match the cache or queries; B < w unless B ≥ n.
class CriticalKV : public OneShot<CriticalKV, CriticalKVParams>,
                   public ObservationWindow<CriticalKV> {
 public:
  static constexpr std::string_view name = "criticalkv";
  static constexpr PolicyInfo info{
      .summary =
          "attention, then attention x projected value norm |V W_o| (Feng et al. 2025); needs W_o",
      .reads = reads_keys | reads_queries | reads_values | reads_output_projection};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(join<Params>(
        {detail::window_parameters<Params>(),
         {param<&Params::first_stage_ratio>("first_stage_ratio", "[0, 1]",
                                            "budget share chosen by attention"),
          param<&Params::epsilon>("epsilon", "≥ 0", "added to the attention before weighting"),
          param<&Params::norm>("norm", "", "norm of the projected values")},
         detail::adakv_parameters<Params>()}));
  }

  /// Validates `p` (`check`), then precomputes W_o's Gram matrices for the l2 norm.
  CriticalKV(const Params& p, const OutputProjection& wo) : OneShot(p), wo_(wo) {
    if (p.norm == NormKind::l2) gram_ = kernels::gram_matrices(wo);
  }
  /// Throws `kvevict::error` naming the first invalid parameter (the constructor calls it).
  static void check(const Params& p) {
    detail::check_snapkv(base_params(p));
    detail::require(p.first_stage_ratio >= 0.0 && p.first_stage_ratio <= 1.0, "first_stage_ratio",
                    "a ratio in [0, 1]", p.first_stage_ratio);
    detail::require(std::isfinite(p.epsilon) && p.epsilon >= 0.0, "epsilon", "epsilon >= 0",
                    p.epsilon);
    detail::require(p.alpha_safeguard >= 0.0 && p.alpha_safeguard <= 1.0, "alpha_safeguard",
                    "a fraction in [0, 1]", p.alpha_safeguard);
  }
  const OutputProjection& output_projection() const noexcept { return wo_; }

  /// The SnapKV configuration of the base scores.
  SnapKVParams base_params() const noexcept { return base_params(params_); }
  static SnapKVParams base_params(const Params& p) noexcept {
    return {.window = p.window,
            .kernel = p.kernel,
            .pool = p.pool,
            .reduce = p.reduce,
            .granularity = p.granularity};
  }

  /// CriticalKV's two stages for one row, from the base scores s (first channel) and the
  /// projected value norms N (second) of the prefix m = n − w: the top
  /// `max(0, ⌊ratio · B⌋ − w)` by s, then the top of `(s + ε) · N` until `B − w` prefix tokens
  /// are marked (the window is protected). O(m); scratch m floats.
  struct Rule : TopK {
    double first_stage_ratio, epsilon;
    void pick(const Row& row, std::span<std::uint8_t> keep, Workspace& ws) const {
      const index_t m = row.last(), window = row.n - m, budget = row.budget;
      const index_t prefix_budget = std::min(budget - window, m);
      index_t b1 =
          static_cast<index_t>(std::floor(first_stage_ratio * static_cast<double>(budget)));
      if (row.adaptive && row.adaptive->safeguard == AdaSafeguard::kvpress) {
        // kvpress CriticalAdaKV: ⌊fp32(B_h · ratio)⌋ (an int64 tensor times a Python float is
        // fp32), and the head's safeguard tokens pass stage 1 whatever its size.
        b1 = std::max(row.safeguard, static_cast<index_t>(static_cast<float>(budget) *
                                                          static_cast<float>(first_stage_ratio)));
      }
      const index_t stage1 = std::clamp<index_t>(b1 - window, 0, prefix_budget);
      kernels::top_k(row.score, 0, m, stage1, keep, ws);
      Workspace::Frame frame(ws);
      const auto key = ws.take<float>(m);
      const auto eps = static_cast<float>(epsilon);
      for (index_t j = 0; j < m; ++j)
        key[static_cast<std::size_t>(j)] = (row.score[static_cast<std::size_t>(j)] + eps) *
                                           row.second[static_cast<std::size_t>(j)];
      kernels::top_k(key, 0, m, prefix_budget - stage1, keep, ws);
    }
  };

  Rule rule(index_t) const noexcept { return {{}, params_.first_stage_ratio, params_.epsilon}; }
  template <Element T>
  void check_inputs(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries) const {
    ObservationWindow::check_inputs(kv, queries);
    if (wo_.q_heads() != queries.q_heads())
      detail::fail("wo.q_heads", detail::cat("the queries' q_heads (", queries.q_heads(), ")"),
                   wo_.q_heads());
    if (wo_.head_dim() != kv.head_dim_v())
      detail::fail("wo.head_dim", detail::cat("the values' head_dim (", kv.head_dim_v(), ")"),
                   wo_.head_dim());
  }

  /// SnapKV's base scores (first channel) and the projected value norms `‖V_j W_o^h‖` per
  /// query head (second channel, reduced by mean), both `[q_heads][n]` over the prefix.
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    check_inputs(kv, queries);
    const index_t n = kv.tokens(), w = params_.window, prefix = n - w, q_heads = wo_.q_heads();
    const auto s = detail::snapkv_scores(kv, queries.last(w), params_.kernel, params_.pool, ws);
    const auto norms = ws.take<float>(q_heads * n);
    {
      Workspace::Frame frame(ws);
      const auto per_head = ws.take<float>(q_heads * prefix);
      kernels::projected_value_norms(kv, wo_, prefix, params_.norm, gram_, per_head, ws);
      for (index_t h = 0; h < q_heads; ++h) {
        std::copy_n(per_head.data() + h * prefix, prefix, norms.data() + h * n);
        std::fill_n(norms.data() + h * n + prefix, w, 0.0f);  // the window: protected
      }
    }
    Scores scores = Scores::of_query_heads(s, q_heads, kv, params_.reduce, protect(n));
    scores.second = norms;  // reduced over each group by its mean
    return scores;
  }

 private:
  OutputProjection wo_;
  std::vector<float> gram_;  ///< G_h = W_o^h W_o^hᵀ per query head (l2 only)
};

}  // namespace kvevict
