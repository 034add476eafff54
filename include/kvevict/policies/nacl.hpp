// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief NACL: proxy-token eviction plus attention-weighted random eviction, head by head.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/reduce.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../random.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Budget splits of the NACL paper and code, as fractions of the prompt length n.
enum class NACLPreset {
  none,          ///< use `sinks`, `recent`, `random_share` and every given query as a proxy
  paper10,       ///< Table 4, 10% budget: protect 1%, proxies 3%, top-k 2%, random 7%
  paper20,       ///< Table 4, 20% budget: protect 2%, proxies 18%, top-k 6%, random 12%
  paper30,       ///< Table 4, 30% budget: protect 1.5%, proxies 20%, top-k 10.5%, random 18%
  long_context,  ///< `src/args.py` today: protect 1% (256 sinks), proxies 1%, top-k 12%, random 7%
};

constexpr std::string_view to_string(NACLPreset p) {
  switch (p) {
    case NACLPreset::none:
      return "none";
    case NACLPreset::paper10:
      return "paper10";
    case NACLPreset::paper20:
      return "paper20";
    case NACLPreset::paper30:
      return "paper30";
    case NACLPreset::long_context:
      return "long_context";
  }
  return "?";
}

/// Every `NACLPreset`, in the order the command lists them.
constexpr std::array<NACLPreset, 5> all_values(NACLPreset) {
  return {NACLPreset::none, NACLPreset::paper10, NACLPreset::paper20, NACLPreset::paper30,
          NACLPreset::long_context};
}

/// Parameters of `NACL`.
struct NACLParams {
  index_t sinks = 4;                      ///< S: the first tokens, always kept.
  index_t recent = 32;                    ///< R: the last tokens, always kept.
  double random_share = 2.0 / 3.0;        ///< of the unprotected budget, kept by sampling.
  bool causal = false;                    ///< proxies see only earlier keys (upstream: false).
  GroupReduce reduce = GroupReduce::sum;  ///< over a KV head's query heads.
  Granularity granularity = Granularity::per_head;
  std::uint64_t seed = 0;                ///< with the layer and the head, keys the sampling.
  NACLPreset preset = NACLPreset::none;  ///< a paper split (overrides S, R, share, proxies).
};

/// What a preset (or the plain parameters) means for a cache of n tokens.
struct NACLSplit {
  index_t sinks, recent;
  index_t proxies;  ///< proxy queries used (the last ones of the window); 0 = all given
  double random_share;
};

namespace detail {
struct NACLPresetRow {
  double protect, proxies, top_k, random;
  index_t sinks;
};
/// Table 4 of the paper (arXiv 2408.03675, appendix A.6); the sinks are those of
/// `src/args.py` when its defaults were that table's 20% row (50), and today's (256).
constexpr NACLPresetRow nacl_preset_row(NACLPreset p) {
  switch (p) {
    case NACLPreset::paper10:
      return {0.01, 0.03, 0.02, 0.07, 50};
    case NACLPreset::paper20:
      return {0.02, 0.18, 0.06, 0.12, 50};
    case NACLPreset::paper30:
      return {0.015, 0.20, 0.105, 0.18, 50};
    case NACLPreset::long_context:
      return {0.01, 0.01, 0.12, 0.07, 256};
    case NACLPreset::none:
      break;
  }
  return {0, 0, 0, 0, 0};
}
}  // namespace detail

/// NACL (Chen et al., ACL 2024, arXiv 2408.03675, §5 "Proxy-Tokens Eviction" and §5.2 "Random
/// Eviction"; upstream PaddlePaddle/Research `NLP/ACL2024-NACL/src/llama_nacl_patch.py`,
/// `kvcache_eviction`). One-shot, at prefill; every KV head keeps its own set.
///
/// - Score: `s_h[j] = Σ_{proxy i} A_h[i, j]`, a **sum** over the proxy queries (the given window,
///   or its last `proxies` under a preset), non-causal by default (upstream runs its reduced
///   flash attention with causal = False), reduced over the GQA group by sum.
/// - Protected: sinks [0, S) and the last R tokens. The rest of the budget, E = B − S − R, splits
///   into `C_r = ⌊E · random_share + ½⌋` sampled and `C_p = E − C_r` top-k tokens.
/// - Proxy-tokens eviction: the top C_p unprotected tokens by s (ties: the more recent).
/// - Random eviction: C_r more of the remaining candidates, sampled without replacement with
///   probability ∝ exp(s) — the softmax of the raw sums, temperature 1, as upstream's
///   `np.random.choice(replace=False, p=softmax(s))` — by Gumbel-top-k: key = s − log(−log u),
///   u ~ U(0, 1) from `RandomStream(seed, layer, head)`, one draw per candidate in index order,
///   the top C_r keys win. The same distribution in O(n), without underflow.
///
/// Deviations from upstream, on purpose: upstream scores KV head m with query head m's scores
/// (an indexing quirk under GQA); here each KV head sums its own group. Upstream's recent window
/// `⌊protect · n⌋ − sinks` goes negative for short prompts; presets here clamp it at 0 (sinks
/// take what the protected share allows). Upstream draws from NumPy's global, unseeded RNG; here
/// every (seed, layer, head) has its own reproducible stream.
///
/// - Complexity: one `window_attention` over the proxies (2·P·n·d FLOPs per query head) + O(n)
///   per head for top-k and sampling. Scratch from `ws`; no allocation once warm.
/// - Errors: B < S + R unless B ≥ n; a candidate set smaller than C_p + C_r; `random_share`
///   outside [0, 1].
class NACL : public OneShot<NACL, NACLParams> {
 public:
  static constexpr std::string_view name = "nacl";
  static constexpr PolicyInfo info{
      .summary =
          "proxy-token top-k + attention-weighted random eviction, per head (Chen et al. 2024)",
      .reads = reads_keys | reads_queries};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::sinks>("sinks", "≥ 0", "first tokens always kept"),
         param<&Params::recent>("recent", "≥ 0", "last tokens always kept"),
         param<&Params::random_share>("random_share", "[0, 1]",
                                      "share of the unprotected budget sampled"),
         param<&Params::causal>("causal", "", "proxies see only earlier keys"),
         param<&Params::preset>(
             "preset", "",
             "the paper's split of the budget (overrides sinks, recent, random_share)")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
    detail::require(p.recent >= 0, "recent", "recent >= 0", p.recent);
    detail::require(p.random_share >= 0.0 && p.random_share <= 1.0, "random_share",
                    "a share in [0, 1]", p.random_share);
  }

  /// The protected regions, proxy count and random share for a cache of n tokens.
  NACLSplit split(index_t n) const noexcept {
    if (params_.preset == NACLPreset::none)
      return {params_.sinks, params_.recent, 0, params_.random_share};
    const auto row = detail::nacl_preset_row(params_.preset);
    const auto protect = static_cast<index_t>(row.protect * static_cast<double>(n));
    const index_t sinks = std::min(row.sinks, protect);
    const auto proxies =
        std::max<index_t>(1, static_cast<index_t>(row.proxies * static_cast<double>(n)));
    return {sinks, protect - sinks, proxies, row.random / (row.top_k + row.random)};
  }

  /// NACL's choice for one row: the sinks and recent tokens protected; of the rest of the budget
  /// E = B − S − R, `C_r = ⌊E · random_share + ½⌋` sampled and `C_p = E − C_r` by top-k: the
  /// top C_p candidates by the proxy score, then C_r more by Gumbel-top-k over the remaining
  /// candidates (keys s − log(−log u), u from `RandomStream(seed, layer, head)`, one draw per
  /// candidate in index order, whatever top-k chose). O(n); scratch n floats.
  struct Rule {
    static constexpr bool reads_scores = true;
    NACLSplit split;
    std::uint64_t seed;
    Protected protect(index_t, index_t) const noexcept { return {split.sinks, split.recent}; }
    void check(index_t n, index_t budget, Protected p) const {
      detail::check_protected_budget(budget, p);
      const index_t extra = budget - split.sinks - split.recent;
      const index_t c_random = randoms(extra), c_top = extra - c_random;
      if (extra < 0 || n - split.sinks - split.recent < c_top + c_random)
        detail::fail(
            "budget",
            detail::cat("between sinks + recent (", split.sinks + split.recent, ") and n (", n,
                        ") tokens, so that every kept token has a candidate"),
            budget);
    }
    index_t randoms(index_t extra) const noexcept {
      return static_cast<index_t>(
          std::floor(static_cast<double>(extra) * split.random_share + 0.5));
    }
    void pick(const Row& row, std::span<std::uint8_t> keep, Workspace& ws) const {
      const index_t first = row.first(), last = row.last();
      const index_t extra = row.budget - row.marked;
      const index_t c_random = randoms(extra), c_top = extra - c_random;
      kernels::top_k(row.score, first, last, c_top, keep, ws);
      // Gumbel-top-k over the remaining candidates: P(kept) follows sampling ∝ exp(s) without
      // replacement. One uniform per candidate, in index order, whatever top-k chose.
      Workspace::Frame frame(ws);
      const auto keys = ws.take<float>(row.n);
      RandomStream rng(seed, static_cast<std::uint64_t>(row.layer),
                       static_cast<std::uint64_t>(row.head));
      for (index_t j = first; j < last; ++j) {
        const double u = rng.uniform();
        keys[static_cast<std::size_t>(j)] =
            row.score[static_cast<std::size_t>(j)] - static_cast<float>(std::log(-std::log(u)));
      }
      kernels::top_k(keys, first, last, c_random, keep, ws);
    }
  };

  Rule rule(index_t n) const noexcept { return {split(n), params_.seed}; }

  /// The proxy scores: the sum over the proxies' attention (the given window, or its last
  /// `proxies` under a preset), per query head (`[q_heads][n]` from `ws`), reduced by `reduce`.
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    const NACLSplit sp = split(kv.tokens());
    const QueryWindow<query_type<T>> proxies =
        sp.proxies == 0 ? queries : queries.last(std::min(sp.proxies, queries.window()));
    return kernels::attention_scores(kv, proxies,
                                     {.reduce = WindowReduce::sum, .causal = params_.causal},
                                     params_.reduce, ws, {sp.sinks, sp.recent});
  }
};

}  // namespace kvevict
