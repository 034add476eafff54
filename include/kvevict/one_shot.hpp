// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `OneShot<P>`: the score → choose pipeline as a policy's `select`, written once.
///
/// A one-shot policy P derives from `OneShot<P>` and supplies only its rule:
///
/// \code
/// template <Element T> Scores score(const KVCache<T>&, const QueryWindow<query_type<T>>&,
/// Granularity,
///                                   Workspace&) const;     // unless its rule reads no scores
/// SomeRule rule(index_t n) const;                          // how a row's candidates are chosen
/// Granularity granularity() const;                         // per head or shared
/// std::optional<AdaptiveBudgets> adaptive() const;         // optional: AdaKV budgets
/// Protected protect(index_t n) const;                      // optional: regions its scores imply
/// template <Element T> void check_inputs(kv, queries) const;  // optional: e.g. window ≥ w
/// \endcode
///
/// and gets `select(kv, queries, budget, out, ws)` — validation, B ≥ n keeps everything,
/// budget errors before any scoring, then `choose` — and `choose(scores, budget, out, ws)` for
/// scores an engine computed itself. For `Granularity::pages`, `select` takes the page size of
/// the (paged) view; `choose` takes it as an argument. `Granularity::layers` over several
/// layers is `kvevict::choose` with every layer's `score` (a single layer is its own set).

#include <optional>

#include "budget.hpp"
#include "choose.hpp"
#include "element.hpp"
#include "kv_cache.hpp"
#include "query_window.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

template <class P>
class OneShot {
 public:
  /// Selects, from the cache and the window of the last queries, the tokens each KV head keeps
  /// under `budget` (per KV head, protected regions included), into `out`. Validates the inputs
  /// and the budget before scoring; B ≥ n keeps everything, bit for bit. On error `out` is left
  /// incomplete. Complexity and scratch: the policy's scorer plus `choose`.
  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Budget budget,
              Selection& out, Workspace& ws) const {
    detail::ClearOnError on_error(out);
    const P& p = self();
    check_window(kv, queries);
    if constexpr (requires { p.check_inputs(kv, queries); }) p.check_inputs(kv, queries);
    const index_t n = kv.tokens();
    const auto rule = p.rule(n);
    using Rule = std::remove_cvref_t<decltype(rule)>;
    const Granularity g = p.granularity();
    index_t b = n;
    if (!budget.is_none() || !budget_free_rule<Rule>) {
      b = budget.resolve(n);
      if (b >= n) return out.keep_all(kv.kv_heads(), n, one_set(g));
    }
    rule.check(n, b, unite(implied(n), rule.protect(n, b)));  // before any scoring
    index_t page = 0;
    if (g == Granularity::pages) {
      if (!kv.paged())
        detail::fail("granularity", "a paged view for pages (or kvevict::choose with a page_size)",
                     "a dense view");
      page = kv.page_table().page_size;
    }
    Workspace::Frame frame(ws);
    Scores s{.tokens = n, .kv_heads = kv.kv_heads(), .protect = implied(n), .layer = kv.layer()};
    if constexpr (Rule::reads_scores) s = p.score(kv, queries, g, ws);
    choose_with(s, budget, rule, out, ws, page);
  }

  /// The choice half of `select`, from scores computed elsewhere (an engine's attention kernel,
  /// a tensor-parallel reduction, or this policy's `score`): this policy's rule, granularity,
  /// protected regions and head budgets. On error `out` is left incomplete.
  void choose(const Scores& scores, Budget budget, Selection& out, Workspace& ws,
              index_t page_size = 0) const {
    choose_with(scores, budget, self().rule(scores.tokens), out, ws, page_size);
  }

 protected:
  OneShot() = default;

 private:
  const P& self() const noexcept { return static_cast<const P&>(*this); }

  Protected implied(index_t n) const {
    if constexpr (requires(const P& p) { p.protect(n); })
      return self().protect(n);
    else
      return {};
  }

  template <class Rule>
  void choose_with(const Scores& scores, Budget budget, const Rule& rule, Selection& out,
                   Workspace& ws, index_t page_size) const {
    Choice c{.budget = budget, .granularity = self().granularity(), .page_size = page_size};
    if constexpr (requires(const P& p) { p.adaptive(); }) c.adaptive = self().adaptive();
    Scores s = scores;  // the policy's own regions hold for scores computed elsewhere too
    s.protect = unite(s.protect, implied(scores.tokens));
    kvevict::choose(s, c, rule, out, ws);
  }
};

}  // namespace kvevict
