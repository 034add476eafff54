// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `choose`: the one step from scores to a `Selection` — protected regions, budgets
/// (tokens, ratio, AdaKV head allocation), the tie rule and the granularity — and the rules
/// (choosers) policies plug into it.
///
/// A **rule** decides which candidates of one row (a KV head, or the shared row) stay, given
/// the row's budget; everything around it is common: the budget is resolved once, a budget ≥ n
/// keeps everything bit for bit, protected regions are marked outright and never compete, rows
/// are reduced to the granularity, adaptive head budgets are split, and the kept tokens are
/// written ascending. A rule is a small type:
///
/// \code
/// struct MyRule {
///   static constexpr bool reads_scores = true;             // false: chooses by position
///   static constexpr bool budget_free = false;             // true: accepts Budget::none()
///   static constexpr bool absolute_scores = false;         // true: compares scores with a
///                                                          // fixed threshold (see below)
///   kvevict::Protected protect(kvevict::index_t n, kvevict::index_t budget) const;
///   void check(kvevict::index_t n, kvevict::index_t budget, kvevict::Protected p) const;
///   void pick(const kvevict::Row& row, std::span<std::uint8_t> keep, kvevict::Workspace&) const;
/// };
/// \endcode
///
/// `pick` marks in `keep` (1 = kept; the protected regions are already marked) the row's other
/// kept tokens. The rules of the library: `TopK` (most policies), `Recent` (StreamingLLM),
/// `Uniform` (random), and NACL's, CriticalKV's, CORM's and Cascade's in their headers.
///
/// `Granularity::layers` normally puts the layers' rows on one scale before combining them:
/// each layer's candidate scores are shifted to a minimum of 0 and divided by their sum. A rule
/// that reads a score's value against a fixed threshold (`absolute_scores`: CORM keeps a token
/// whose score is ≥ 1, "important for some recent query") would never see its threshold
/// crossed on that scale; for it the layers' raw scores are combined by their maximum — a token
/// important in any layer is important for the sequence, as CORM's "any query head" within a
/// layer — and `Choice::combine` does not apply.

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "budget.hpp"
#include "error.hpp"
#include "kernels/head_budgets.hpp"
#include "kernels/topk.hpp"
#include "random.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

struct AdaptiveBudgets;

/// One row a rule chooses from.
struct Row {
  std::span<const float> score;   ///< n scores (empty for positional rules)
  std::span<const float> second;  ///< the second channel's n scores, if any
  index_t n = 0;                  ///< tokens
  index_t head = 0;               ///< the row's KV head (0 for a shared row)
  index_t layer = 0;              ///< from `Scores::layer`: keys random streams
  index_t budget = 0;             ///< tokens this row keeps in all, protected ones included
  Protected protect = {};         ///< already marked in `keep`
  index_t marked = 0;             ///< tokens already marked (the protected ones)
  /// With adaptive budgets: the options, and the tokens every head is guaranteed (the
  /// safeguard, protected tokens included). Null and 0 otherwise.
  const AdaptiveBudgets* adaptive = nullptr;
  index_t safeguard = 0;

  /// First and one-past-last candidate index: the tokens between the protected regions.
  index_t first() const noexcept { return std::min(protect.sinks, n); }
  index_t last() const noexcept { return std::max(first(), n - protect.recent); }
};

/// Which safeguard AdaKV's allocation guarantees each head.
enum class AdaSafeguard {
  /// NVIDIA/kvpress `adakv_press.py` (commit 8bb29b9), the default: `int(alpha · B)` tokens per
  /// head **counting the protected window** (SnapKV's window scores are the largest, so they
  /// are a head's first safeguard tokens), and in CriticalKV those tokens also survive stage 1
  /// and stage 2 (kvpress sets them to the float maximum before both stages).
  kvpress,
  /// The original AdaKV repository (FFY0/AdaKV): the window plus `⌊alpha · (B − w)⌋` of the
  /// candidates; CriticalKV's stage 1 is then `⌊ratio · B_h⌋ − w` whatever the safeguard.
  adakv,
};

constexpr std::string_view to_string(AdaSafeguard s) {
  return s == AdaSafeguard::kvpress ? "kvpress" : "adakv";
}

/// Every `AdaSafeguard`, in the order the command lists them.
constexpr std::array<AdaSafeguard, 2> all_values(AdaSafeguard) {
  return {AdaSafeguard::kvpress, AdaSafeguard::adakv};
}

/// AdaKV's head-adaptive budgets (Feng et al., arXiv 2407.11550, §4; kvpress `adakv_press.py`):
/// every head keeps a safeguard share of the mean budget, the rest goes to the best
/// (head, token) pairs across heads, so heads whose attention is concentrated give tokens to
/// heads whose attention is spread. Only for per-head choices (the selection becomes ragged).
struct AdaptiveBudgets {
  double alpha = 0.2;  ///< share of the mean budget every head keeps (`alpha_safeguard`)
  AdaSafeguard safeguard = AdaSafeguard::kvpress;

  /// Tokens each head of budget B keeps whatever the scores, its `marked` protected ones
  /// included.
  index_t guaranteed(index_t budget, index_t marked) const noexcept {
    if (safeguard == AdaSafeguard::kvpress)  // Python's int(n_kept * alpha), in double
      return std::max(marked, static_cast<index_t>(static_cast<double>(budget) * alpha));
    return marked + static_cast<index_t>(std::floor(static_cast<double>(budget - marked) * alpha));
  }
};

/// How `Granularity::layers` combines the layers' scores (each first normalised, see `choose`).
enum class LayerCombine { mean, max };
constexpr std::string_view to_string(LayerCombine c) {
  return c == LayerCombine::mean ? "mean" : "max";
}
constexpr std::array<LayerCombine, 2> all_values(LayerCombine) {
  return {LayerCombine::mean, LayerCombine::max};
}

/// How `Granularity::pages` scores a page from its tokens' scores.
enum class PageScore { sum, max };
constexpr std::string_view to_string(PageScore c) {
  return c == PageScore::sum ? "sum" : "max";
}
constexpr std::array<PageScore, 2> all_values(PageScore) {
  return {PageScore::sum, PageScore::max};
}

/// How `choose` spends a budget.
struct Choice {
  Budget budget;  ///< tokens per KV head, protected included (every granularity)
  Granularity granularity = Granularity::per_head;
  std::optional<AdaptiveBudgets> adaptive = {};  ///< AdaKV; `per_head` choices only
  index_t page_size = 0;                         ///< tokens per page (`pages` only)
  PageScore page_score = PageScore::sum;         ///< a page's score from its tokens' (`pages`)
  LayerCombine combine = LayerCombine::mean;     ///< layers' normalised scores (`layers`;
                                                 ///< not for `absolute_scores` rules)
};

/// The named requirements of a rule (see the file comment).
template <class R>
concept ChoiceRule = requires(const R& r, const Row& row, std::span<std::uint8_t> keep,
                              Workspace& ws, index_t i, Protected p) {
  { R::reads_scores } -> std::convertible_to<bool>;
  { r.protect(i, i) } -> std::same_as<Protected>;
  { r.check(i, i, p) } -> std::same_as<void>;
  { r.pick(row, keep, ws) } -> std::same_as<void>;
};

/// Whether rule R accepts `Budget::none()`.
template <class R>
constexpr bool budget_free_rule = requires {
  requires R::budget_free;
};

/// Whether rule R compares scores with a fixed threshold (see the file comment).
template <class R>
constexpr bool absolute_scores_rule = requires {
  requires R::absolute_scores;
};

namespace detail {

/// The check every rule starts from: the budget holds the protected regions outright.
inline void check_protected_budget(index_t budget, Protected p) {
  const index_t need = p.sinks + p.recent;
  if (budget >= need) return;
  if (p.sinks > 0 && p.recent > 0)
    fail("budget", cat("at least sinks + ", p.recent_name, " (", need, ") tokens"), budget);
  fail("budget", cat("at least ", p.sinks > 0 ? "sinks" : p.recent_name, " (", need, ") tokens"),
       budget);
}

}  // namespace detail

/// The top of the scores among the candidates (ties: the more recent token), what SnapKV, TOVA,
/// H2O and every attention-free scorer keep.
struct TopK {
  static constexpr bool reads_scores = true;
  Protected protect(index_t, index_t) const noexcept { return {}; }
  void check(index_t, index_t budget, Protected p) const {
    detail::check_protected_budget(budget, p);
  }
  void pick(const Row& row, std::span<std::uint8_t> keep, Workspace& ws) const {
    kernels::top_k(row.score, row.first(), row.last(), row.budget - row.marked, keep, ws);
  }
};

/// The most recent candidates: with sinks, StreamingLLM's rule (everything it keeps is a
/// protected region, so nothing is left to pick).
struct Recent {
  static constexpr bool reads_scores = false;
  index_t sinks = 0;
  Protected protect(index_t, index_t budget) const noexcept {
    return {sinks, std::max<index_t>(0, budget - sinks)};
  }
  void check(index_t, index_t budget, Protected) const {
    detail::check_protected_budget(budget, {sinks, 0});
  }
  void pick(const Row&, std::span<std::uint8_t>, Workspace&) const noexcept {}
};

/// Candidates drawn uniformly without replacement (a partial Fisher–Yates shuffle), each row
/// from its own stream `RandomStream(seed, layer, head)`: the random baseline.
struct Uniform {
  static constexpr bool reads_scores = false;
  Protected keep = {};
  std::uint64_t seed = 0;
  Protected protect(index_t, index_t) const noexcept { return keep; }
  void check(index_t, index_t budget, Protected p) const {
    detail::check_protected_budget(budget, p);
  }
  void pick(const Row& row, std::span<std::uint8_t> keep_mask, Workspace& ws) const {
    Workspace::Frame frame(ws);
    const index_t first = row.first(), last = row.last();
    const auto pool = ws.take<token_t>(last - first);
    std::iota(pool.begin(), pool.end(), static_cast<token_t>(first));
    RandomStream rng(seed, static_cast<std::uint64_t>(row.layer),
                     static_cast<std::uint64_t>(row.head));
    const auto m = static_cast<std::uint64_t>(pool.size());
    const auto draws = static_cast<std::uint64_t>(std::max<index_t>(0, row.budget - row.marked));
    for (std::uint64_t i = 0; i < draws && i < m; ++i) {
      const std::uint64_t j = i + rng.next() % (m - i);  // bias < m / 2^64
      std::swap(pool[i], pool[j]);
      keep_mask[static_cast<std::size_t>(pool[i])] = 1;
    }
  }
};

namespace detail {

/// Adds layer `scores`' one-row reduction of `channel`, normalised over the candidates
/// [first, last) to a distribution — shifted by its minimum, divided by its sum (a constant row
/// becomes uniform) — into `out` by mean (weight 1/L) or max. Protected tokens are left 0.
/// `raw`: an absolute_scores rule's rows, combined by their maximum as they are (`how` ignored).
inline void combine_layer(std::span<const float> row, index_t first, index_t last, LayerCombine how,
                          double weight, bool first_layer, bool raw, std::span<float> out) {
  if (raw) {
    for (index_t j = 0; j < static_cast<index_t>(out.size()); ++j) {
      const float v = j >= first && j < last ? row[static_cast<std::size_t>(j)] : 0.0f;
      float& o = out[static_cast<std::size_t>(j)];
      o = first_layer ? v : std::max(o, v);
    }
    return;
  }
  float lo = std::numeric_limits<float>::infinity();
  for (index_t j = first; j < last; ++j) lo = std::min(lo, row[static_cast<std::size_t>(j)]);
  double sum = 0;
  for (index_t j = first; j < last; ++j)
    sum += static_cast<double>(row[static_cast<std::size_t>(j)]) - lo;
  const index_t m = last - first;
  for (index_t j = 0; j < static_cast<index_t>(out.size()); ++j) {
    float v = 0.0f;
    if (j >= first && j < last)
      v = sum > 0 ? static_cast<float>(
                        (static_cast<double>(row[static_cast<std::size_t>(j)]) - lo) / sum)
                  : static_cast<float>(1.0 / static_cast<double>(m));
    float& o = out[static_cast<std::size_t>(j)];
    if (first_layer)
      o = how == LayerCombine::mean ? static_cast<float>(weight * v) : v;
    else
      o = how == LayerCombine::mean ? o + static_cast<float>(weight * v) : std::max(o, v);
  }
}

/// Per-page scores of one row: sum or max over each page's candidate tokens (protected tokens
/// excluded; a page with no candidate scores 0, and is protected anyway).
inline void page_scores(std::span<const float> row, index_t n, index_t page, Protected p,
                        PageScore how, std::span<float> out) {
  const index_t first = std::min(p.sinks, n), last = std::max(first, n - p.recent);
  for (std::size_t q = 0; q < out.size(); ++q) {
    const index_t b = static_cast<index_t>(q) * page, e = std::min(n, b + page);
    float acc = how == PageScore::sum ? 0.0f : -std::numeric_limits<float>::infinity();
    bool any = false;
    for (index_t j = std::max(b, first); j < std::min(e, last); ++j) {
      const float x = row[static_cast<std::size_t>(j)];
      acc = how == PageScore::sum ? acc + x : std::max(acc, x);
      any = true;
    }
    out[q] = any ? acc : 0.0f;
  }
}

}  // namespace detail

namespace detail {

/// What every granularity chooses from: the layers' shape, the resolved budget, the protected
/// regions, the candidate range between them, and the rows the rule ranks (one per KV head,
/// or one for a single set; either channel empty when the scores have none).
struct ChoiceRows {
  index_t n = 0, kv_heads = 0, budget = 0, layer = 0;
  Protected protect = {};
  index_t first = 0, last = 0;  ///< candidates [first, last)
  std::span<const float> values = {}, second = {};

  /// Row h (of `len` entries) of a channel, or an empty span.
  static std::span<const float> row(std::span<const float> c, index_t h, index_t len) {
    return c.empty() ? c
                     : c.subspan(static_cast<std::size_t>(h * len), static_cast<std::size_t>(len));
  }
};

/// Every layer's scores valid, over the same tokens and heads, with scores where the rule
/// reads them; several layers only for `Granularity::layers`.
template <ChoiceRule R>
void check_layers(std::span<const Scores> layers, Granularity g) {
  if (layers.empty()) fail("scores", "the scores of at least one layer", "none");
  if (layers.size() > 1 && g != Granularity::layers)
    fail("scores", "one layer's scores (several only for granularity layers)", layers.size(),
         " layers");
  const index_t n = layers[0].tokens, kv_heads = layers[0].kv_heads;
  for (const Scores& scores : layers) {
    scores.validate();
    if (scores.tokens != n || scores.kv_heads != kv_heads)
      fail("scores", cat("every layer over the same ", n, " tokens and ", kv_heads, " KV heads"),
           scores.tokens, " tokens, ", scores.kv_heads, " KV heads");
    if constexpr (R::reads_scores)
      if (scores.values.empty())
        fail("scores.values", "scores for this rule (it ranks tokens by them)", "none");
  }
}

/// The rows the rule ranks, into `r.values` / `r.second`: each channel reduced to the
/// granularity's rows; for `layers`, each layer's one row normalised and combined (see
/// `combine_layer`; raw maxima for an `absolute_scores` rule). Scratch from `ws`.
template <ChoiceRule R>
void rank_rows(std::span<const Scores> layers, const Choice& choice, ChoiceRows& r, Workspace& ws) {
  const Granularity g = choice.granularity;
  const auto reduce = [&](const Scores& s, bool second) {
    return reduce_rows(second ? s.second : s.values, s.kind, s.rows, r.n, r.kv_heads,
                       second ? s.second_reduce : s.reduce, g, ws.take<float>(r.kv_heads * r.n));
  };
  for (const bool second : {false, true}) {
    if ((second ? layers[0].second : layers[0].values).empty()) continue;
    std::span<const float>& into = second ? r.second : r.values;
    if (g != Granularity::layers) {
      into = reduce(layers[0], second);
      continue;
    }
    const auto combined = ws.take<float>(r.n);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      Workspace::Frame inner(ws);
      combine_layer(reduce(layers[l], second), r.first, r.last, choice.combine,
                    1.0 / static_cast<double>(layers.size()), l == 0, absolute_scores_rule<R>,
                    combined);
    }
    into = combined;
  }
}

/// `Granularity::pages`: the rule picks whole pages of the shared row (scored per page), the
/// pages holding protected tokens kept outright; every token of a kept page stays.
template <ChoiceRule R>
void choose_pages(const ChoiceRows& r, const Choice& choice, const R& rule, Selection& out,
                  Workspace& ws) {
  const index_t n = r.n, page = choice.page_size, pages = (n + page - 1) / page;
  const Protected pp{.sinks = (r.first + page - 1) / page,
                     .recent = r.last >= n ? 0 : pages - r.last / page,
                     .recent_name = r.protect.recent_name};
  const index_t page_budget = r.budget / page, page_marked = pp.count(pages);
  if (page_budget < page_marked)
    fail("budget",
         cat("at least the pages holding protected tokens (", page_marked, " pages of ", page,
             " = ", page_marked * page, " tokens)"),
         r.budget);
  std::span<float> ps, ps2;
  if (!r.values.empty()) {
    ps = ws.take<float>(pages);
    page_scores(r.values, n, page, r.protect, choice.page_score, ps);
  }
  if (!r.second.empty()) {
    ps2 = ws.take<float>(pages);
    page_scores(r.second, n, page, r.protect, choice.page_score, ps2);
  }
  const auto page_keep = ws.take<std::uint8_t>(pages);
  std::fill(page_keep.begin(), page_keep.end(), std::uint8_t{0});
  kernels::keep_range(page_keep, 0, std::min(pp.sinks, pages));
  kernels::keep_range(page_keep, std::max<index_t>(0, pages - pp.recent), pages);
  rule.pick({.score = ps,
             .second = ps2,
             .n = pages,
             .head = 0,
             .layer = r.layer,
             .budget = page_budget,
             .protect = pp,
             .marked = page_marked},
            page_keep, ws);
  const auto keep = ws.take<std::uint8_t>(n);
  for (index_t j = 0; j < n; ++j)
    keep[static_cast<std::size_t>(j)] = page_keep[static_cast<std::size_t>(j / page)];
  kernels::add_head_from_mask(out, keep);
}

/// Every other granularity: per stored head (a KV head, or the one shared set) the protected
/// regions marked and the rule's pick; `per_head` with AdaKV budgets split first; `equal`
/// filled up, head by head, with its own top candidates to the largest head's count.
template <ChoiceRule R>
void choose_heads(const ChoiceRows& r, const Choice& choice, const R& rule, Selection& out,
                  Workspace& ws) {
  const index_t n = r.n, stored = out.stored_heads(), marked = r.protect.count(n);
  const bool equal = choice.granularity == Granularity::equal;
  const auto budgets = ws.take<index_t>(stored);
  std::fill(budgets.begin(), budgets.end(), r.budget);
  const AdaptiveBudgets* adaptive = choice.adaptive &&
                                            choice.granularity == Granularity::per_head &&
                                            stored > 1 && !r.values.empty()
                                        ? &*choice.adaptive
                                        : nullptr;
  const index_t safeguard = adaptive ? adaptive->guaranteed(r.budget, marked) : 0;
  if (adaptive)
    adaptive_budgets(r.values, stored, n, r.first, r.last, marked, r.budget, safeguard, budgets,
                     ws);
  const auto keep = ws.take<std::uint8_t>(stored * n);
  const auto mask_of = [&](index_t h) {
    return keep.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(n));
  };
  index_t most = 0;
  for (index_t h = 0; h < stored; ++h) {
    const auto mask = mask_of(h);
    std::fill(mask.begin(), mask.end(), std::uint8_t{0});
    kernels::keep_range(mask, 0, r.first);
    kernels::keep_range(mask, std::max<index_t>(0, n - r.protect.recent), n);
    rule.pick({.score = ChoiceRows::row(r.values, h, n),
               .second = ChoiceRows::row(r.second, h, n),
               .n = n,
               .head = h,
               .layer = r.layer,
               .budget = budgets[static_cast<std::size_t>(h)],
               .protect = r.protect,
               .marked = marked,
               .adaptive = adaptive,
               .safeguard = safeguard},
              mask, ws);
    if (equal) most = std::max(most, kernels::kept_count(mask));
  }
  for (index_t h = 0; h < stored; ++h) {
    const auto mask = mask_of(h);
    if (equal && !r.values.empty()) {
      const index_t missing = most - kernels::kept_count(mask);
      if (missing > 0)
        kernels::top_k(ChoiceRows::row(r.values, h, n), r.first, r.last, missing, mask, ws);
    }
    kernels::add_head_from_mask(out, mask);
  }
}

}  // namespace detail

/// Chooses, from the scores of one layer (or, for `Granularity::layers`, of several layers
/// given together), the tokens each KV head keeps under `choice`, with `rule` deciding among
/// the candidates; writes the selection into `out`.
///
/// Steps, common to every policy: validate the scores; resolve the budget B (a budget-free rule
/// takes `Budget::none()` as "no cap"); B ≥ n keeps everything, bit for bit; the protected
/// regions (the scores' and the rule's) must fit in B; then, by granularity:
/// - `per_head`: rows reduced to KV heads; with `adaptive`, AdaKV splits the candidates' places
///   among the heads by their scores (ragged); per row, protected regions marked, rule picks.
/// - `equal`: as `per_head` without adaptive budgets, and a head whose rule kept fewer than
///   another's (CORM's threshold) is filled up by its own top candidates to the largest count.
/// - `shared`: rows reduced over every query head into one; one set for every KV head.
/// - `layers` (pinned): each layer's rows reduced to one, normalised over the candidates to a
///   distribution (shifted by its minimum, divided by its sum, so layers with sharp and flat
///   attention, or scores of any sign, weigh alike), then the mean over layers (`combine =
///   max`: the maximum); the rule picks from that one row. The same set for every layer: what a
///   token-slot engine (llama.cpp) can free. Budget B still counts tokens per KV head, so the
///   memory kept equals a per-head choice's.
/// - `pages` (pinned): the shared row scored per page of `page_size` tokens (`page_score`: sum
///   of its candidates' scores, or max), pages holding a protected token kept, and the rule
///   picks ⌊B / page_size⌋ pages in all; every token of a kept page stays, so the engine frees
///   whole pages (`dropped_pages`) and compacts nothing.
///
/// Complexity O(layers · rows · n) plus the rule's (top-k: O(n) per row on average). Scratch
/// from `ws`: (kv_heads + 2) · n floats + kv_heads · n bytes (+ the rule's, + AdaKV's); no
/// allocation once `ws` and `out` are warm. If it throws, `out` is left incomplete.
template <ChoiceRule R>
void choose(std::span<const Scores> layers, const Choice& choice, const R& rule, Selection& out,
            Workspace& ws) {
  detail::ClearOnError on_error(out);
  const Granularity g = choice.granularity;
  detail::check_layers<R>(layers, g);
  if (g == Granularity::pages)
    detail::require(choice.page_size >= 1, "page_size", "a page of at least 1 token for pages",
                    choice.page_size);
  detail::ChoiceRows r{.n = layers[0].tokens, .kv_heads = layers[0].kv_heads};
  r.budget = r.n;
  if (!choice.budget.is_none() || !budget_free_rule<R>) {
    r.budget = choice.budget.resolve(r.n);
    if (r.budget >= r.n) return out.keep_all(r.kv_heads, r.n, one_set(g));
  }
  r.protect = rule.protect(r.n, r.budget);
  for (const Scores& scores : layers) r.protect = unite(r.protect, scores.protect);
  rule.check(r.n, r.budget, r.protect);
  if (choice.adaptive && g == Granularity::per_head)
    detail::require(choice.adaptive->alpha >= 0.0 && choice.adaptive->alpha <= 1.0,
                    "alpha_safeguard", "a fraction in [0, 1]", choice.adaptive->alpha);
  Workspace::Frame frame(ws);
  r.first = std::min(r.protect.sinks, r.n);
  r.last = std::max(r.first, r.n - r.protect.recent);
  r.layer = layers[0].layer;
  detail::rank_rows<R>(layers, choice, r, ws);
  out.reset(r.kv_heads, r.n, one_set(g));
  if (g == Granularity::pages)
    detail::choose_pages(r, choice, rule, out, ws);
  else
    detail::choose_heads(r, choice, rule, out, ws);
}

/// `choose` for one layer's scores.
template <ChoiceRule R>
void choose(const Scores& scores, const Choice& choice, const R& rule, Selection& out,
            Workspace& ws) {
  choose(std::span<const Scores>(&scores, 1), choice, rule, out, ws);
}

/// The logical pages (of `page_size` tokens) that a page-granular selection drops entirely:
/// what a paged engine frees (map them through its block table), ascending. Throws unless
/// `sel` keeps whole pages only (every token of a page, or none). O(n).
inline void dropped_pages(const Selection& sel, index_t page_size, std::vector<index_t>& out) {
  sel.validate();
  detail::require(page_size >= 1, "page_size", "at least 1 token", page_size);
  out.clear();
  const index_t n = sel.tokens(), pages = (n + page_size - 1) / page_size;
  for (index_t h = 0; h < sel.stored_heads(); ++h) {
    std::vector<index_t> count(static_cast<std::size_t>(pages), 0);
    for (token_t t : sel.kept(h)) ++count[static_cast<std::size_t>(t / page_size)];
    for (index_t q = 0; q < pages; ++q) {
      const index_t full = std::min(page_size, n - q * page_size),
                    c = count[static_cast<std::size_t>(q)];
      if (c != 0 && c != full)
        detail::fail("selection", "whole pages kept or dropped", "page ", q, " of head ", h,
                     " keeps ", c, " of ", full, " tokens");
      if (h == 0 && c == 0) out.push_back(q);
      if (h > 0 && (c == 0) != std::binary_search(out.begin(), out.end(), q))
        detail::fail("selection", "the same pages for every head", "head ", h, " differs at page ",
                     q);
    }
  }
}

}  // namespace kvevict
