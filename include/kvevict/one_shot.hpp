// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `OneShot<P, Params>`: what every policy shares — its parameters, their validation,
/// and the score → choose pipeline as its `select` — written once.
///
/// A policy P derives from `OneShot<P, PParams>` and supplies only what is its own — a name,
/// what it reads, how a row's candidates are chosen (its rule) and, unless the rule chooses by
/// position, a score:
///
/// \code
/// struct NewestParams {
///   kvevict::Granularity granularity = kvevict::Granularity::per_head;
/// };
/// class Newest : public kvevict::OneShot<Newest, NewestParams> {  // keeps the latest tokens
///  public:
///   using OneShot::OneShot;  // Newest(), Newest(const NewestParams&), validated by check
///   static constexpr std::string_view name = "newest";
///   static constexpr kvevict::PolicyInfo info{.summary = "the most recent tokens (example)"};
///   kvevict::TopK rule(kvevict::index_t) const { return {}; }
///   template <kvevict::Element T>
///   kvevict::Scores score(const kvevict::KVCache<T>& kv,
///                         const kvevict::QueryWindow<kvevict::query_type<T>>&,
///                         kvevict::Granularity, kvevict::Workspace& ws) const {
///     auto s = ws.take<float>(kv.kv_heads() * kv.tokens());  // [kv_heads][n], from ws
///     for (std::size_t i = 0; i < s.size(); ++i)
///       s[i] = static_cast<float>(i % static_cast<std::size_t>(kv.tokens()));
///     return kvevict::Scores::of_kv_heads(s, kv);
///   }
/// };
/// \endcode
///
/// Optional members: `static std::vector<Parameter<Params>> parameters()` (its own; the default
/// and `with_common_parameters` add `reduce`, `granularity`, `seed` where `Params` has them),
/// `static void check(const Params&)` (throws `kvevict::error`), `adaptive()` (AdaKV budgets),
/// `protect(n)` (regions its scores imply), `check_inputs(kv, queries)` (e.g. window ≥ w).
///
/// and gets `params()`, `granularity()` (the `granularity` parameter, per_head without one),
/// `select(kv, queries, budget, out, ws)` — validation, B ≥ n keeps everything, budget errors
/// before any scoring, then `choose` — `choose(scores, budget, out, ws)` for scores an engine
/// computed itself, and `choose_layers` for one set across layers. For `Granularity::pages`,
/// `select` takes the page size of the (paged) view; `choose` takes it as an argument.

#include <concepts>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "budget.hpp"
#include "choose.hpp"
#include "element.hpp"
#include "kv_cache.hpp"
#include "metadata.hpp"
#include "query_window.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

namespace detail {

/// P scores a cache of T (it has a `score` for it).
template <class P, class T>
concept scores_cache = requires(const P& p, const KVCache<T>& kv,
                                const QueryWindow<query_type<T>>& q, Granularity g, Workspace& ws) {
  { p.score(kv, q, g, ws) } -> std::same_as<Scores>;
};

/// P's `select` serves a cache of T: its rule chooses by position, or it scores T.
template <class P, class T>
concept selects_cache =
    !std::remove_cvref_t<decltype(std::declval<const P&>().rule(index_t{}))>::reads_scores ||
    scores_cache<P, T>;

}  // namespace detail

template <class P, class Params_>
class OneShot {
 public:
  using Params = Params_;

  /// The default parameters, validated by `P::check`.
  OneShot() : OneShot(Params{}) {}
  /// `p`, validated by `P::check` (a `kvevict::error` naming the parameter).
  explicit OneShot(const Params& p) : params_(p) {
    if constexpr (requires { P::check(p); }) P::check(p);
  }

  /// The parameters every policy of these `Params` shares (`reduce`, `granularity`, `seed` where
  /// present); a policy with its own declares `parameters()` and hides this one.
  static std::vector<Parameter<Params>> parameters() { return with_common_parameters<Params>({}); }

  const Params& params() const noexcept { return params_; }
  /// The unit of the choice: the `granularity` parameter (per_head for a policy without one).
  Granularity granularity() const noexcept {
    if constexpr (requires { params_.granularity; })
      return params_.granularity;
    else
      return Granularity::per_head;
  }

  /// Selects, from the cache and the window of the last queries, the tokens each KV head keeps
  /// under `budget` (per KV head, protected regions included), into `out`. Validates the inputs
  /// and the budget before scoring; B ≥ n keeps everything, bit for bit. On error `out` is left
  /// incomplete. Complexity and scratch: the policy's scorer plus `choose`.
  template <Element T>
  requires detail::selects_cache<P, T>
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

  /// One set for several layers (`Granularity::layers`: a llama.cpp cell holds a token of every
  /// layer) from each layer's `score`, the policy's protected regions holding in every layer,
  /// the layers combined as `combine` (see `choose`). On error `out` is left incomplete.
  /// Allocates one copy of the layers' `Scores` headers (not their values).
  void choose_layers(std::span<const Scores> layers, Budget budget, Selection& out, Workspace& ws,
                     LayerCombine combine = LayerCombine::mean) const {
    detail::ClearOnError on_error(out);
    if (layers.empty()) detail::fail("layers", "the scores of at least 1 layer", 0);
    std::vector<Scores> with(layers.begin(), layers.end());
    for (Scores& s : with) s.protect = unite(s.protect, implied(s.tokens));
    const Choice c{.budget = budget, .granularity = Granularity::layers, .combine = combine};
    kvevict::choose(std::span<const Scores>(with), c, self().rule(layers[0].tokens), out, ws);
  }

 protected:
  Params params_;

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
