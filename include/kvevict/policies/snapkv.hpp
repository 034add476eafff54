// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief SnapKV: the observation window's pooled attention picks each head's prefix tokens.

#include <cstdint>
#include <span>
#include <string_view>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/head_budgets.hpp"
#include "../kernels/pool.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
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
  bool shared = false;                     ///< one set for all heads (reduced over all heads).
  bool ada = false;                        ///< AdaKV head-adaptive budgets (ragged per head).
  double alpha_safeguard = 0.2;            ///< AdaKV: each head keeps ≥ this share of the mean.
};

namespace detail {
inline void check_snapkv(const SnapKVParams& p) {
  require(p.window >= 1, "window", "window >= 1", p.window);
  require(p.kernel >= 1, "kernel", "kernel >= 1", p.kernel);
  require(p.alpha_safeguard >= 0.0 && p.alpha_safeguard <= 1.0, "alpha_safeguard",
          "a fraction in [0, 1]", p.alpha_safeguard);
}
}  // namespace detail

/// SnapKV (Li et al., arXiv 2404.14469, §4.2 "Efficient clustering via pooling", Algorithm 1;
/// upstream FasterDecoding/SnapKV `snapkv/monkeypatch/snapkv_utils.py`, `update_kv`).
///
/// For each query head: `s[j] = mean_i A[i, j]` over the last w queries (causal inside the
/// window) for the prefix j < n − w; pooled over j (out-of-range neighbours ignored by max,
/// zero-padded by avg); reduced over the KV head's group (mean). Keeps the window [n − w, n)
/// plus the top B − w prefix tokens (ties: the more recent). Per head, or shared (reduced over
/// all query heads). With `ada`, AdaKV's head-adaptive budgets (Feng et al., arXiv 2407.11550;
/// see `head_budgets`): head h keeps w + b_h tokens, the b_h summing to kv_heads · (B − w).
///
/// Deviations from upstream, on purpose: upstream expands KV heads to query heads (each query
/// head keeps its own set, losing GQA's memory saving); here scores are reduced over the group
/// first, as kvpress does. Upstream leaves a prompt shorter than its capacity untouched; here
/// any B ≥ n keeps everything. Upstream's top-k order on ties is unspecified; here the more
/// recent token wins.
///
/// - Complexity: one `window_attention` (2·w·n·d FLOPs per query head) + O(q_heads · n · kernel)
///   pooling + O(n) selection per head. Scratch from `ws` (see `window_attention`), plus
///   (q_heads + 1) · n floats and n bytes; no allocation once `ws` and `out` are warm.
/// - Errors: `queries.window` < w; B < w (the window cannot be kept) unless B ≥ n.
class SnapKV {
 public:
  static constexpr std::string_view name = "snapkv";
  using Params = SnapKVParams;

  SnapKV() : SnapKV(Params{}) {}
  explicit SnapKV(const Params& p) : params_(p) { detail::check_snapkv(p); }
  const Params& params() const noexcept { return params_; }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    const index_t w = params_.window;
    if (queries.window() < w)
      detail::fail("queries.window", detail::cat("at least SnapKV's window (", w, ")"),
                   queries.window());
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared, w, "window");
    if (b == 0) return;
    Workspace::Frame frame(ws);
    const index_t n = kv.tokens(), prefix = n - w;
    const auto scores = pooled_prefix_scores(kv, queries.last(w), ws);
    const index_t stored = out.stored_heads();
    const auto budgets = ws.take<index_t>(stored);
    if (params_.ada && stored > 1) {
      head_budgets(scores, stored, prefix, b - w, params_.alpha_safeguard, budgets, ws);
    } else {
      std::fill(budgets.begin(), budgets.end(), b - w);
    }
    const auto keep = ws.take<std::uint8_t>(n);
    for (index_t h = 0; h < stored; ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, prefix, n);
      top_k(scores.subspan(static_cast<std::size_t>(h * prefix), static_cast<std::size_t>(prefix)),
            0, prefix, budgets[static_cast<std::size_t>(h)], keep, ws);
      add_head_from_mask(out, keep);
    }
  }

  /// The pooled, group-reduced scores of the prefix [0, n − w): `(shared ? 1 : kv_heads) ×
  /// (n − w)` floats taken from `ws` (valid until the caller's frame ends). `window` is the
  /// observation window (exactly w queries). Used by `select` and by wrappers (CriticalKV,
  /// AdaKV) that rank the same scores differently.
  template <Element T>
  std::span<float> pooled_prefix_scores(const KVCache<T>& kv, const QueryWindow<T>& window,
                                        Workspace& ws) const {
    const index_t n = kv.tokens(), w = window.window(), prefix = n - w;
    const index_t q_heads = window.q_heads();
    const auto attention = ws.take<float>(q_heads * n);
    window_attention(kv, window, {.reduce = WindowReduce::mean, .causal = true}, attention, ws);
    const auto pooled = ws.take<float>(q_heads * prefix);
    for (index_t h = 0; h < q_heads; ++h)
      pool1d(attention.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(prefix)),
             pooled.subspan(static_cast<std::size_t>(h * prefix), static_cast<std::size_t>(prefix)),
             params_.kernel, params_.pool, ws);
    const index_t groups = params_.shared ? 1 : kv.kv_heads();
    const auto reduced = ws.take<float>(groups * prefix);
    reduce_groups(pooled, q_heads, prefix, kv.kv_heads(), params_.reduce, params_.shared, reduced);
    return reduced;
  }

 private:
  Params params_;
};

}  // namespace kvevict
