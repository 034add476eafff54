// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief LagKV: score each partition of the cache against the next one — no attention needed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../element.hpp"
#include "../error.hpp"
#include "../kernels/finite.hpp"
#include "../kernels/head_rows.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `LagKV` (kvpress's defaults).
struct LagKVParams {
  index_t n_sink = 4;          ///< first tokens: score 1 (kept first)
  index_t lag = 128;           ///< partition length
  bool cross_scoring = false;  ///< the softmax scores themselves, not their ranks in a partition
  Granularity granularity = Granularity::per_head;
};

/// LagKV (Liang et al., "LagKV: Lag-Relative Information of the KV Cache Tells Which Tokens Are
/// Important", arXiv 2504.04704, §3; upstream NVIDIA/kvpress `kvpress/presses/lagkv_press.py`,
/// commit 8bb29b9). Per KV head, on keys and values alike:
///
/// - The tokens after the n_sink sinks are cut into m full partitions of `lag` tokens; the
///   rest (the last full partition plus the remainder, `lag + (n − n_sink) mod lag` tokens) and
///   the sinks score 1, above every other score.
/// - Partition i (i < m − 1) is scored against partition i + 1, its reference: per channel c,
///   min_c and max_c over the reference's tokens; each token's x_c becomes
///   (x_c − min_c) / (max_c − min_c); its score is the standard deviation of those over the
///   channels (unbiased, N − 1), softmaxed over the partition's tokens. Keys' and values'
///   scores are averaged. Without `cross_scoring`, each becomes its rank in its partition
///   divided by `lag` (0 … (lag − 1)/lag, below 1).
/// - A cache shorter than n_sink + 2·lag has no partition to score: the sinks score 1 and the
///   others (j − n_sink)/(n − n_sink), so the most recent tokens stay.
///
/// Deviations: a channel constant over the reference (max = min) divides by zero upstream
/// (inf/NaN); here it contributes 0. Ranks break equal scores by position (the earlier ranks
/// lower; upstream's argsort is unstable), and the top-k keeps the more recent token among equal
/// scores (ranks of different partitions tie). Sums in double.
///
/// - Complexity O(kv_heads · n · (d + d_v)); scratch from `ws`: kv_heads · n floats + 2 · lag.
class LagKV : public OneShot<LagKV, LagKVParams> {
 public:
  static constexpr std::string_view name = "lagkv";
  static constexpr PolicyInfo info{
      .summary =
          "partition scored against the next one's min/max, no attention (Liang et al. 2025)",
      .reads = reads_keys | reads_values};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::n_sink>("n_sink", "≥ 0", "first tokens scored 1"),
         param<&Params::lag>("lag", "≥ 2", "partition length"),
         param<&Params::cross_scoring>("cross_scoring", "", "the scores, not their ranks")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.n_sink >= 0, "n_sink", "n_sink >= 0", p.n_sink);
    detail::require(p.lag >= 2, "lag", "lag >= 2 tokens", p.lag);
  }

  TopK rule(index_t) const noexcept { return {}; }

  /// LagKV's scores per KV head and token (`[kv_heads][n]` from `ws`).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>&, Granularity,
               Workspace& ws) const {
    const index_t n = kv.tokens(), sink = params_.n_sink, lag = params_.lag;
    detail::require_finite(kv, /*keys=*/true, /*values=*/true);
    return kernels::head_rows(kv, ws, [&](index_t h, std::span<float> row) {
      float* s = row.data();
      if (n < sink + 2 * lag) {  // no partition to score: sinks, then by recency
        for (index_t j = 0; j < n; ++j)
          s[j] = j < sink ? 1.0f
                          : static_cast<float>(static_cast<double>(j - sink) /
                                               static_cast<double>(n - sink));
        return;
      }
      const index_t m = (n - sink) / lag, end = sink + m * lag;
      std::fill(s, s + n, 1.0f);  // sinks, the last full partition and the remainder
      const auto part = ws.take<double>(lag), other = ws.take<double>(lag);
      for (index_t p = 0; p + 1 < m; ++p) {
        const index_t begin = sink + p * lag;
        partition_scores(kv, h, begin, lag, /*keys=*/true, part);
        partition_scores(kv, h, begin, lag, /*keys=*/false, other);
        for (index_t i = 0; i < lag; ++i)
          part[static_cast<std::size_t>(i)] =
              (part[static_cast<std::size_t>(i)] + other[static_cast<std::size_t>(i)]) / 2;
        if (params_.cross_scoring) {
          for (index_t i = 0; i < lag; ++i)
            s[begin + i] = static_cast<float>(part[static_cast<std::size_t>(i)]);
          continue;
        }
        // rank in the partition / lag (ties: the earlier token ranks lower)
        std::vector<index_t> order(static_cast<std::size_t>(lag));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
          return part[static_cast<std::size_t>(a)] < part[static_cast<std::size_t>(b)];
        });
        for (index_t r = 0; r < lag; ++r)
          s[begin + order[static_cast<std::size_t>(r)]] =
              static_cast<float>(static_cast<double>(r) / static_cast<double>(lag));
      }
      (void)end;
    });
  }

 private:
  /// softmax over the partition [begin, begin + lag) of the channel-std of its tokens normalised
  /// by the next partition's per-channel min/max.
  template <Element T>
  static void partition_scores(const KVCache<T>& kv, index_t h, index_t begin, index_t lag,
                               bool keys, std::span<double> out) {
    const index_t d = keys ? kv.head_dim() : kv.head_dim_v();
    std::vector<double> lo(static_cast<std::size_t>(d), INFINITY),
        hi(static_cast<std::size_t>(d), -INFINITY);
    std::vector<float> buffer(static_cast<std::size_t>(d));
    const auto row = [&](index_t t) -> const std::vector<float>& {
      kv.read(keys ? Tensor::keys : Tensor::values, h, t, buffer.data());
      return buffer;
    };
    for (index_t t = begin + lag; t < begin + 2 * lag; ++t) {
      const auto x = row(t);
      for (index_t c = 0; c < d; ++c) {
        const double v = x[static_cast<std::size_t>(c)];
        lo[static_cast<std::size_t>(c)] = std::min(lo[static_cast<std::size_t>(c)], v);
        hi[static_cast<std::size_t>(c)] = std::max(hi[static_cast<std::size_t>(c)], v);
      }
    }
    double max = -INFINITY;
    for (index_t i = 0; i < lag; ++i) {
      const auto x = row(begin + i);
      double mean = 0, sq = 0;
      for (index_t c = 0; c < d; ++c) {
        const double range = hi[static_cast<std::size_t>(c)] - lo[static_cast<std::size_t>(c)];
        const double v = x[static_cast<std::size_t>(c)];
        const double z = range > 0 ? (v - lo[static_cast<std::size_t>(c)]) / range : 0.0;
        mean += z;
        sq += z * z;
      }
      mean /= static_cast<double>(d);
      const double var =
          d > 1 ? (sq - static_cast<double>(d) * mean * mean) / static_cast<double>(d - 1) : 0.0;
      out[static_cast<std::size_t>(i)] = std::sqrt(std::max(var, 0.0));
      max = std::max(max, out[static_cast<std::size_t>(i)]);
    }
    double sum = 0;
    for (index_t i = 0; i < lag; ++i)
      sum += out[static_cast<std::size_t>(i)] = std::exp(out[static_cast<std::size_t>(i)] - max);
    for (index_t i = 0; i < lag; ++i) out[static_cast<std::size_t>(i)] /= sum;
  }
};

}  // namespace kvevict
