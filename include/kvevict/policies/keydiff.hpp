// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief KeyDiff: keep the keys least similar to the mean key direction — no attention needed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../element.hpp"
#include "../error.hpp"
#include "../kernels/finite.hpp"
#include "../kernels/head_rows.hpp"
#include "../kernels/norm.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `KeyDiff`.
struct KeyDiffParams {
  /// 0: score every key against the anchor of all keys (kvpress `KeyDiffPress`). > 0: kvpress's
  /// block-iterative form (`BlockPress(KeyDiffPress(), block_size)`, default there 128): start
  /// from the first B tokens, add the next `block` tokens, keep the best B of those, repeat.
  index_t block = 0;
  Granularity granularity = Granularity::per_head;
};

namespace detail {

/// x / max(‖x‖₂, eps) into `out` (fp32 in, double norm).
inline void normalise(const float* x, index_t d, double eps, float* out) {
  const double sum = kernels::squared_norm({x, static_cast<std::size_t>(d)});
  const double scale = 1.0 / std::max(std::sqrt(sum), eps);
  for (index_t i = 0; i < d; ++i) out[i] = static_cast<float>(x[i] * scale);
}

/// KeyDiff's scores of the tokens `rows` (unit keys, `[m][d]` fp32): −cos(k, anchor), the
/// anchor being the mean of the unit keys, and cos as torch's `cosine_similarity` computes it
/// (each side divided by max(‖·‖, 1e-8), then the dot product).
inline void keydiff_scores(std::span<const float> unit, index_t m, index_t d,
                           std::span<float> anchor, std::span<float> out) {
  std::fill(anchor.begin(), anchor.end(), 0.0f);
  for (index_t t = 0; t < m; ++t)
    for (index_t i = 0; i < d; ++i)
      anchor[static_cast<std::size_t>(i)] += unit[static_cast<std::size_t>(t * d + i)];
  for (float& a : anchor) a /= static_cast<float>(m);
  normalise(anchor.data(), d, 1e-8, anchor.data());
  for (index_t t = 0; t < m; ++t) {
    double dot = 0;
    for (index_t i = 0; i < d; ++i)
      dot += static_cast<double>(unit[static_cast<std::size_t>(t * d + i)]) *
             anchor[static_cast<std::size_t>(i)];
    out[static_cast<std::size_t>(t)] = -static_cast<float>(dot);
  }
}

}  // namespace detail

/// KeyDiff (Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM
/// Inference in Resource-Constrained Environments", arXiv 2504.15364, §3; upstream
/// NVIDIA/kvpress `kvpress/presses/keydiff_press.py` and `block_press.py`, commit 8bb29b9).
/// Per KV head: the anchor is the mean of the keys normalised to unit length
/// (`F.normalize`, eps 1e-12); a key's score is −cos(k, anchor) (`F.cosine_similarity`: each
/// side over max(‖·‖, 1e-8)); the top B stay — the keys that differ most from the typical
/// direction. Reads the keys only.
///
/// With `block > 0`, kvpress's `BlockPress` form: kept = the first B tokens; for each next
/// block of `block` tokens, the anchor and scores are recomputed over kept ∪ block and the best
/// B of them stay. It bounds memory for very long prompts and gives different (block-local)
/// choices; per head only (`per_head` or `equal`).
///
/// Deviations: ties keep the more recent token (torch.topk's order is unspecified); kept tokens
/// stay in position order; the budget is tokens (or a rounded ratio).
///
/// - Complexity O(kv_heads · n · d) (block form: O(kv_heads · n · d · (1 + B / block)));
///   scratch (n + B + block) · d + n floats from `ws`.
class KeyDiff : public OneShot<KeyDiff, KeyDiffParams> {
 public:
  static constexpr std::string_view name = "keydiff";
  static constexpr PolicyInfo info{
      .summary = "keys least similar to the mean key direction, no attention (Park et al. 2025)",
      .reads = reads_keys};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::block>("block", "≥ 0", "block-iterative form: tokens per block (0: off)")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.block >= 0, "block", "block >= 0 (0: off)", p.block);
    detail::require(p.block == 0 || p.granularity == Granularity::per_head ||
                        p.granularity == Granularity::equal,
                    "granularity", "per_head or equal for the block form",
                    to_string(p.granularity));
  }

  TopK rule(index_t) const noexcept { return {}; }

  /// −cos(k, anchor) per KV head and token (`[kv_heads][n]` from `ws`).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>&, Granularity,
               Workspace& ws) const {
    detail::require_finite_scales(kv);
    const index_t n = kv.tokens(), d = kv.head_dim();
    return kernels::head_rows(kv, ws, [&](index_t h, std::span<float> row) {
      const auto unit = ws.take<float>(n * d), anchor = ws.take<float>(d), k = ws.take<float>(d);
      for (index_t t = 0; t < n; ++t) {
        kv.read(Tensor::keys, h, t, k.data());
        detail::normalise(k.data(), d, 1e-12, unit.data() + t * d);
        check_finite(unit.data() + t * d, d, h, t);
      }
      detail::keydiff_scores(unit, n, d, anchor, row);
    });
  }

  /// `OneShot::select`, or the block-iterative form when `block > 0`.
  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Budget budget,
              Selection& out, Workspace& ws) const {
    if (params_.block == 0) return OneShot::select(kv, queries, budget, out, ws);
    detail::ClearOnError on_error(out);
    check_window(kv, queries);
    detail::require_finite_scales(kv);
    const index_t n = kv.tokens(), d = kv.head_dim(), b = budget.resolve(n);
    if (b >= n) return out.keep_all(kv.kv_heads(), n, false);
    const index_t block = std::min(params_.block, n);
    out.reset(kv.kv_heads(), n, false);
    Workspace::Frame frame(ws);
    const auto unit = ws.take<float>((b + block) * d), anchor = ws.take<float>(d),
               k = ws.take<float>(d);
    const auto score = ws.take<float>(b + block);
    const auto pick = ws.take<std::uint8_t>(b + block);
    const auto cur = ws.take<token_t>(b + block), next = ws.take<token_t>(b);
    const auto keep = ws.take<std::uint8_t>(n);
    for (index_t h = 0; h < kv.kv_heads(); ++h) {
      index_t kept = b;
      for (index_t t = 0; t < b; ++t) cur[static_cast<std::size_t>(t)] = static_cast<token_t>(t);
      for (index_t start = b; start < n; start += block) {
        const index_t m = kept + std::min(block, n - start);
        for (index_t i = kept; i < m; ++i)
          cur[static_cast<std::size_t>(i)] = static_cast<token_t>(start + i - kept);
        for (index_t i = 0; i < m; ++i) {
          const index_t t = cur[static_cast<std::size_t>(i)];
          kv.read(Tensor::keys, h, t, k.data());
          detail::normalise(k.data(), d, 1e-12, unit.data() + i * d);
          check_finite(unit.data() + i * d, d, h, t);
        }
        detail::keydiff_scores(unit.first(static_cast<std::size_t>(m * d)), m, d, anchor, score);
        // the best b of the m candidates; ties to the later candidate = the more recent token
        std::fill(pick.begin(), pick.end(), std::uint8_t{0});
        kernels::top_k(score.first(static_cast<std::size_t>(m)), 0, m, b, pick, ws);
        index_t j = 0;
        for (index_t i = 0; i < m; ++i)
          if (pick[static_cast<std::size_t>(i)] != 0)
            next[static_cast<std::size_t>(j++)] = cur[static_cast<std::size_t>(i)];
        std::copy_n(next.begin(), j, cur.begin());
        kept = j;
      }
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      for (index_t i = 0; i < kept; ++i)
        keep[static_cast<std::size_t>(cur[static_cast<std::size_t>(i)])] = 1;
      kernels::add_head_from_mask(out, keep);
    }
  }

 private:
  static void check_finite(const float* x, index_t d, index_t h, index_t t) {
    for (index_t i = 0; i < d; ++i)
      if (!std::isfinite(x[i]))
        detail::fail("keys", "finite values", "a non-finite key at KV head ", h, ", token ", t);
  }
};

}  // namespace kvevict
