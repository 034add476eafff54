// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief CriticalKV: attention first, then attention weighted by how far each value can move
/// the layer's output.

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/head_budgets.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kernels/value_norm.hpp"
#include "../kv_cache.hpp"
#include "../output_projection.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
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
  bool shared = false;           ///< one set for all heads.
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
/// - `ada`: AdaKV budgets (see `head_budgets`) from the base scores: head h gets w + b_h tokens,
///   the b_h summing to kv_heads · (B − w); the selection is then ragged per head.
///
/// Deviation from upstream, on purpose: upstream forces the window in through stage 1 (SnapKV
/// pads it with max + 1), so when ⌊ratio · B⌋ < w some window tokens can lose in stage 2; here
/// the window is always kept and stage 1 takes what is left of ⌊ratio · B⌋.
///
/// - Holds a *view* of the layer's W_o (it must outlive the policy); with `norm = l2` owns the
///   Gram matrices (q_heads · d² floats, computed in O(q_heads · d² · hidden) at construction).
/// - Complexity: SnapKV's scoring + the norms (2·(n − w)·d·hidden FLOPs per query head for L1,
///   2·(n − w)·d² for L2) + O(n) selection per head. Scratch from `ws`; no allocation once warm.
/// - Errors: W_o that does not match the cache or queries; B < w unless B ≥ n.
class CriticalKV {
 public:
  static constexpr std::string_view name = "criticalkv";
  using Params = CriticalKVParams;

  CriticalKV(const Params& p, const OutputProjection& wo) : params_(p), wo_(wo) {
    detail::check_snapkv(base_params());
    detail::require(p.first_stage_ratio >= 0.0 && p.first_stage_ratio <= 1.0, "first_stage_ratio",
                    "a ratio in [0, 1]", p.first_stage_ratio);
    detail::require(std::isfinite(p.epsilon) && p.epsilon >= 0.0, "epsilon", "epsilon >= 0",
                    p.epsilon);
    detail::require(p.alpha_safeguard >= 0.0 && p.alpha_safeguard <= 1.0, "alpha_safeguard",
                    "a fraction in [0, 1]", p.alpha_safeguard);
    if (p.norm == NormKind::l2) gram_ = gram_matrices(wo);
  }
  const Params& params() const noexcept { return params_; }
  const OutputProjection& output_projection() const noexcept { return wo_; }

  /// The SnapKV configuration of the base scores.
  SnapKVParams base_params() const noexcept {
    return {params_.window, params_.kernel, params_.pool, params_.reduce, params_.shared};
  }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    const index_t w = params_.window;
    if (queries.window() < w)
      detail::fail("queries.window", detail::cat("at least CriticalKV's window (", w, ")"),
                   queries.window());
    if (wo_.q_heads() != queries.q_heads())
      detail::fail("wo.q_heads", detail::cat("the queries' q_heads (", queries.q_heads(), ")"),
                   wo_.q_heads());
    if (wo_.head_dim() != kv.head_dim_v())
      detail::fail("wo.head_dim", detail::cat("the values' head_dim (", kv.head_dim_v(), ")"),
                   wo_.head_dim());
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared, w, "window");
    if (b == 0) return;
    const index_t n = kv.tokens(), prefix = n - w, stored = out.stored_heads();
    Workspace::Frame frame(ws);
    const auto s = SnapKV(base_params()).pooled_prefix_scores(kv, queries.last(w), ws);
    const auto per_head = ws.take<float>(wo_.q_heads() * prefix);
    projected_value_norms(kv, wo_, prefix, params_.norm, gram_, per_head, ws);
    const auto norms = ws.take<float>(stored * prefix);
    reduce_groups(per_head, wo_.q_heads(), prefix, kv.kv_heads(), GroupReduce::mean, params_.shared,
                  norms);
    const auto budgets = ws.take<index_t>(stored);
    if (params_.ada && stored > 1) {
      head_budgets(s, stored, prefix, b - w, params_.alpha_safeguard, budgets, ws);
    } else {
      std::fill(budgets.begin(), budgets.end(), b - w);
    }
    const auto keep = ws.take<std::uint8_t>(n);
    const auto key = ws.take<float>(prefix);
    for (index_t h = 0; h < stored; ++h) {
      const auto sh =
          s.subspan(static_cast<std::size_t>(h * prefix), static_cast<std::size_t>(prefix));
      const auto nh =
          norms.subspan(static_cast<std::size_t>(h * prefix), static_cast<std::size_t>(prefix));
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, prefix, n);
      choose(sh, nh, w, w + budgets[static_cast<std::size_t>(h)], key, keep, ws);
      add_head_from_mask(out, keep);
    }
  }

  /// The two stages for one head, from base scores `s` and norms `N` of the prefix (size m):
  /// marks in `keep` (size ≥ m) the top `max(0, ⌊ratio · B⌋ − window)` by s, then the top of
  /// `(s + ε) · N` until `B − window` prefix tokens are marked. `key` is m floats of scratch.
  /// The window itself is the caller's (already kept). O(m).
  void choose(std::span<const float> s, std::span<const float> norm, index_t window, index_t budget,
              std::span<float> key, std::span<std::uint8_t> keep, Workspace& ws) const {
    const auto m = static_cast<index_t>(s.size());
    const index_t prefix_budget = std::min(budget - window, m);
    const auto b1 =
        static_cast<index_t>(std::floor(params_.first_stage_ratio * static_cast<double>(budget)));
    const index_t stage1 = std::clamp<index_t>(b1 - window, 0, prefix_budget);
    top_k(s, 0, m, stage1, keep, ws);
    const auto eps = static_cast<float>(params_.epsilon);
    for (index_t j = 0; j < m; ++j)
      key[static_cast<std::size_t>(j)] =
          (s[static_cast<std::size_t>(j)] + eps) * norm[static_cast<std::size_t>(j)];
    top_k(key.first(static_cast<std::size_t>(m)), 0, m, prefix_budget - stage1, keep, ws);
  }

 private:
  Params params_;
  OutputProjection wo_;
  std::vector<float> gram_;  ///< G_h = W_o^h W_o^hᵀ per query head (l2 only)
};

}  // namespace kvevict
