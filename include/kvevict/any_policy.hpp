// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `AnyPolicy` and `AnyStream`: a configured policy, and a started sequence, of any type —
/// the library's own or one an engine registered (`register_policy`, registry.hpp).
///
/// Everything that runs "a policy chosen at run time" takes an `AnyPolicy`: `select_layers`,
/// `PeriodicDriver`, `eval::run`, `eval::replay`, the llama.cpp adapter. The library's policies
/// are held by value and dispatched without a virtual call; a policy of the engine's own is held
/// behind one interface (`detail::CustomPolicy`), instantiated for every element type a
/// `KVCache` may hold when the `AnyPolicy` is made from it — so a custom policy's `select` must
/// compile for each (it may reject the types it does not serve: see `register_policy`).
///
/// **Example**:
/// \code
/// kvevict::AnyPolicy p = kvevict::SnapKV({.window = 16});   // or parse_policy("snapkv:window=16")
/// p.select(kv, queries, kvevict::Budget::ratio(0.2), keep, ws);
/// kvevict::Scores s = p.score(kv, queries, kvevict::Granularity::layers, ws);
/// \endcode

#include <concepts>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

#include "budget.hpp"
#include "choose.hpp"
#include "element.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "metadata.hpp"
#include "output_projection.hpp"
#include "policies/cascade.hpp"
#include "policies/corm.hpp"
#include "policies/criticalkv.hpp"
#include "policies/expected_attention.hpp"
#include "policies/h2o.hpp"
#include "policies/keydiff.hpp"
#include "policies/knorm.hpp"
#include "policies/lagkv.hpp"
#include "policies/nacl.hpp"
#include "policies/random_eviction.hpp"
#include "policies/snapkv.hpp"
#include "policies/streaming_llm.hpp"
#include "policies/tova.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "stream.hpp"
#include "workspace.hpp"

namespace kvevict {

class AnyPolicy;
class AnyStream;

/// What a policy type must provide to be held by an `AnyPolicy` (and registered by name): a
/// name, its metadata, a `Params` aggregate with the parameter table, `params()`, a constructor
/// from `Params` (and an `OutputProjection` when it reads W_o), and a one-shot `select` for fp32
/// caches or a streaming `start`. Deriving from `OneShot<P, Params>` gives all but the rule.
template <class P>
concept PolicyType = named_policy<P> && std::copy_constructible<P> && requires(const P& p) {
  { P::info } -> std::convertible_to<PolicyInfo>;
  typename P::Params;
  { P::parameters() } -> std::same_as<std::vector<Parameter<typename P::Params>>>;
  { p.params() } -> std::convertible_to<const typename P::Params&>;
  { p.granularity() } -> std::same_as<Granularity>;
} &&(selects_from_window<P, float> || starts_sequences<P>);

namespace detail {

/// The element types a `KVCache` may hold: what a policy behind `AnyPolicy` is compiled for.
template <class F>
void for_each_element_type(F&& f) {
  f.template operator()<float>();
  f.template operator()<Eigen::half>();
  f.template operator()<Eigen::bfloat16>();
  f.template operator()<q8_0>();
  f.template operator()<q4_0>();
  f.template operator()<fp8_e4m3>();
  f.template operator()<fp8_e5m2>();
  f.template operator()<int8>();
}

// -- What every policy type offers, written once for the built-in ones and the custom ones
// ---------

template <class P>
Granularity granularity_of(const P& p) {
  return p.granularity();
}

/// The observation window a policy needs at least (its `window` parameter), 0 for none.
template <class P>
index_t observation_window(const P& p) {
  if constexpr (requires { p.params().window; })
    return static_cast<index_t>(p.params().window);
  else
    return 0;
}

template <class P>
std::vector<std::pair<std::string, std::string>> describe_params(const P& p) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& f : P::parameters()) out.emplace_back(std::string(f.name), f.get(p.params()));
  return out;
}

/// True when P's choice reads scores (false: it keeps tokens by position).
template <class P>
constexpr bool reads_scores() {
  if constexpr (requires(const P& p) { p.rule(index_t{0}); })
    return std::remove_cvref_t<decltype(std::declval<const P&>().rule(index_t{0}))>::reads_scores;
  else
    return true;
}

[[noreturn]] inline void unsupported(std::string_view policy, std::string_view what) {
  fail("policy", cat("a policy with ", what), "'", std::string(policy), "', which has none");
}

/// `p.score`, or for a rule that chooses by position the shape alone (what `choose` needs).
template <class P, Element T>
Scores score_with(const P& p, const KVCache<T>& kv, const QueryWindow<query_type<T>>& q,
                  Granularity g, Workspace& ws) {
  if constexpr (!reads_scores<P>()) {
    check_window(kv, q);
    return Scores{.tokens = kv.tokens(), .kv_heads = kv.kv_heads(), .layer = kv.layer()};
  } else if constexpr (requires { p.score(kv, q, g, ws); }) {
    return p.score(kv, q, g, ws);
  } else {
    unsupported(P::name, cat("a score for ", dtype_name<T>(), " caches"));
  }
}

template <class P, Element T>
void select_with(const P& p, const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Budget b,
                 Selection& out, Workspace& ws) {
  if constexpr (selects_from_window<P, T>) {
    p.select(kv, q, b, out, ws);
  } else {
    ClearOnError on_error(out);
    unsupported(P::name, cat("a one-shot select for ", dtype_name<T>(), " caches"));
  }
}

template <class P>
void choose_with(const P& p, const Scores& s, Budget b, Selection& out, Workspace& ws,
                 index_t page_size) {
  if constexpr (requires { p.choose(s, b, out, ws, page_size); }) {
    p.choose(s, b, out, ws, page_size);
  } else {
    ClearOnError on_error(out);
    unsupported(P::name, "a choose step (derive it from OneShot)");
  }
}

template <class P>
void choose_layers_with(const P& p, std::span<const Scores> layers, Budget b, LayerCombine c,
                        Selection& out, Workspace& ws) {
  if constexpr (requires { p.choose_layers(layers, b, out, ws, c); }) {
    p.choose_layers(layers, b, out, ws, c);
  } else {
    ClearOnError on_error(out);
    unsupported(P::name, "a choice across layers (derive it from OneShot)");
  }
}

/// P rebuilt with another output projection (CriticalKV per layer); P itself when it reads none.
template <class P>
P with_projection(const P& p, const OutputProjection& wo) {
  if constexpr (std::is_constructible_v<P, typename P::Params, OutputProjection>)
    return P(p.params(), wo);
  else
    return p;
}

// -- The interface a custom policy is held behind -------------------------------------------------

/// One sequence of a custom streaming policy.
class CustomStream {
 public:
  virtual ~CustomStream() = default;
  virtual std::unique_ptr<CustomStream> clone() const = 0;
  virtual std::span<const token_t> append(std::int64_t position) = 0;
  virtual Evictions observe(const AttentionRows& rows) = 0;
  virtual index_t slots() const = 0;
  virtual index_t size(index_t head) const = 0;
  virtual std::int64_t position(index_t head, index_t slot) const = 0;
  virtual void* target(const std::type_info& type) = 0;
};

template <SequenceStream S>
class CustomStreamModel final : public CustomStream {
 public:
  explicit CustomStreamModel(S s) : s_(std::move(s)) {}
  std::unique_ptr<CustomStream> clone() const override {
    return std::make_unique<CustomStreamModel>(s_);
  }
  std::span<const token_t> append(std::int64_t position) override { return s_.append(position); }
  Evictions observe(const AttentionRows& rows) override { return s_.observe(rows); }
  index_t slots() const override { return s_.slots(); }
  index_t size(index_t head) const override { return s_.size(head); }
  std::int64_t position(index_t head, index_t slot) const override {
    return s_.position(head, slot);
  }
  void* target(const std::type_info& type) override { return type == typeid(S) ? &s_ : nullptr; }

 private:
  S s_;
};

/// The element-type-specific half of the interface, once per type a `KVCache` may hold.
template <Element T>
class CustomOps {
 public:
  virtual ~CustomOps() = default;
  virtual void select(const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Budget b,
                      Selection& out, Workspace& ws) const = 0;
  virtual Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Granularity g,
                       Workspace& ws) const = 0;
};

template <Element... Ts>
class CustomOpsSet : public CustomOps<Ts>... {
 public:
  using CustomOps<Ts>::select...;
  using CustomOps<Ts>::score...;
};

/// A policy of an engine's own, behind one interface.
class CustomPolicy : public CustomOpsSet<float, Eigen::half, Eigen::bfloat16, q8_0, q4_0, fp8_e4m3,
                                         fp8_e5m2, int8> {
 public:
  virtual std::string_view name() const = 0;
  virtual const PolicyInfo& info() const = 0;
  virtual std::vector<std::pair<std::string, std::string>> describe() const = 0;
  virtual Granularity granularity() const = 0;
  virtual index_t window() const = 0;
  virtual bool reads_scores() const = 0;
  virtual void choose(const Scores& s, Budget b, Selection& out, Workspace& ws,
                      index_t page_size) const = 0;
  virtual void choose_layers(std::span<const Scores> layers, Budget b, LayerCombine c,
                             Selection& out, Workspace& ws) const = 0;
  virtual std::unique_ptr<CustomStream> start(const StreamConfig& config) const = 0;
  virtual std::shared_ptr<const CustomPolicy> with_projection(const OutputProjection& wo) const = 0;
  virtual const void* target(const std::type_info& type) const = 0;
};

template <PolicyType P>
class CustomModelBase : public CustomPolicy {
 public:
  explicit CustomModelBase(P p) : p_(std::move(p)) {}
  const P& policy() const noexcept { return p_; }

  std::string_view name() const override { return P::name; }
  const PolicyInfo& info() const override { return P::info; }
  std::vector<std::pair<std::string, std::string>> describe() const override {
    return describe_params(p_);
  }
  Granularity granularity() const override { return granularity_of(p_); }
  index_t window() const override { return observation_window(p_); }
  bool reads_scores() const override { return detail::reads_scores<P>(); }
  void choose(const Scores& s, Budget b, Selection& out, Workspace& ws,
              index_t page_size) const override {
    choose_with(p_, s, b, out, ws, page_size);
  }
  void choose_layers(std::span<const Scores> layers, Budget b, LayerCombine c, Selection& out,
                     Workspace& ws) const override {
    choose_layers_with(p_, layers, b, c, out, ws);
  }
  std::unique_ptr<CustomStream> start(const StreamConfig& config) const override {
    if constexpr (starts_sequences<P>)
      return std::make_unique<CustomStreamModel<decltype(p_.start(config))>>(p_.start(config));
    else
      unsupported(P::name, "a decode-time form (start)");
  }
  const void* target(const std::type_info& type) const override {
    return type == typeid(P) ? &p_ : nullptr;
  }

 private:
  P p_;
};

/// Implements `CustomOps<T>` for P on top of `Base`.
template <class P, class Base, Element T>
class CustomOpsFor : public Base {
 public:
  using Base::Base;
  using Base::score;
  using Base::select;
  void select(const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Budget b, Selection& out,
              Workspace& ws) const override {
    select_with(this->policy(), kv, q, b, out, ws);
  }
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& q, Granularity g,
               Workspace& ws) const override {
    return score_with(this->policy(), kv, q, g, ws);
  }
};

template <class P, class Base, Element... Ts>
struct ChainOps {
  using type = Base;
};
template <class P, class Base, Element T, Element... Ts>
struct ChainOps<P, Base, T, Ts...> {
  using type = typename ChainOps<P, CustomOpsFor<P, Base, T>, Ts...>::type;
};

template <PolicyType P>
class CustomModel final
    : public ChainOps<P, CustomModelBase<P>, float, Eigen::half, Eigen::bfloat16, q8_0, q4_0,
                      fp8_e4m3, fp8_e5m2, int8>::type {
  using Base = typename ChainOps<P, CustomModelBase<P>, float, Eigen::half, Eigen::bfloat16, q8_0,
                                 q4_0, fp8_e4m3, fp8_e5m2, int8>::type;

 public:
  explicit CustomModel(P p) : Base(std::move(p)) {}
  std::shared_ptr<const CustomPolicy> with_projection(const OutputProjection& wo) const override {
    return std::make_shared<const CustomModel>(detail::with_projection(this->policy(), wo));
  }
};

/// True when T is one of the variant V's alternatives.
template <class T, class V>
constexpr bool alternative_of = false;
template <class T, class... Ts>
constexpr bool alternative_of<T, std::variant<Ts...>> = (std::same_as<T, Ts> || ...);

/// A custom stream in a value type (copies clone the sequence's state).
class CustomStreamHolder {
 public:
  explicit CustomStreamHolder(std::unique_ptr<CustomStream> s) : s_(std::move(s)) {}
  CustomStreamHolder(const CustomStreamHolder& o) : s_(o.s_->clone()) {}
  CustomStreamHolder(CustomStreamHolder&&) noexcept = default;
  CustomStreamHolder& operator=(const CustomStreamHolder& o) {
    if (this != &o) s_ = o.s_->clone();
    return *this;
  }
  CustomStreamHolder& operator=(CustomStreamHolder&&) noexcept = default;
  ~CustomStreamHolder() = default;
  CustomStream& operator*() const noexcept { return *s_; }
  CustomStream* operator->() const noexcept { return s_.get(); }

 private:
  std::unique_ptr<CustomStream> s_;
};

}  // namespace detail

/// A started sequence of any streaming policy: what `AnyPolicy::start` returns. Satisfies
/// `SequenceStream` (append, observe, slots, size, position) with the contract of `Stream<P>`.
class AnyStream {
 private:
  using Rep = std::variant<Stream<StreamingLLM>, Stream<RandomEviction>, Stream<TOVA>, Stream<H2O>,
                           Stream<CORM>, Stream<Cascade>, detail::CustomStreamHolder>;

  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(
        [&](auto& s) -> decltype(auto) {
          if constexpr (std::same_as<std::decay_t<decltype(s)>, detail::CustomStreamHolder>)
            return f(*s);
          else
            return f(s);
        },
        s_);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(
        [&](const auto& s) -> decltype(auto) {
          if constexpr (std::same_as<std::decay_t<decltype(s)>, detail::CustomStreamHolder>)
            return f(std::as_const(*s));
          else
            return f(s);
        },
        s_);
  }

 public:
  using Builtin = std::variant<Stream<StreamingLLM>, Stream<RandomEviction>, Stream<TOVA>,
                               Stream<H2O>, Stream<CORM>, Stream<Cascade>>;

  template <class S>
  requires std::constructible_from<Builtin, S> AnyStream(S s)
      : s_(std::in_place_type<S>, std::move(s)) {}  // NOLINT: a stream is an AnyStream
  explicit AnyStream(std::unique_ptr<detail::CustomStream> s)
      : s_(detail::CustomStreamHolder(std::move(s))) {}

  std::span<const token_t> append(std::int64_t position) {
    return visit([&](auto& s) { return s.append(position); });
  }
  Evictions observe(const AttentionRows& rows) {
    return visit([&](auto& s) { return s.observe(rows); });
  }
  index_t slots() const {
    return visit([](const auto& s) { return s.slots(); });
  }
  index_t size(index_t head) const {
    return visit([&](const auto& s) { return s.size(head); });
  }
  std::int64_t position(index_t head, index_t slot) const {
    return visit([&](const auto& s) { return s.position(head, slot); });
  }

  /// The sequence as its own type (`Stream<Cascade>` for its `prefill`), or null.
  template <class S>
  S* target() noexcept {
    if constexpr (detail::alternative_of<S, Rep>)
      if (auto* s = std::get_if<S>(&s_)) return s;
    if (auto* c = std::get_if<detail::CustomStreamHolder>(&s_))
      return static_cast<S*>((*c)->target(typeid(S)));
    return nullptr;
  }

  Rep s_;
};

/// A configured policy of any type. Copies are cheap (a custom policy is shared, immutable).
/// Every member is const and safe to call from many threads at once, as the policies' own.
class AnyPolicy {
 public:
  /// The library's policies, held by value.
  using Builtin = std::variant<StreamingLLM, RandomEviction, SnapKV, TOVA, H2O, NACL, CriticalKV,
                               CORM, Cascade, KNorm, KeyDiff, ExpectedAttention, LagKV>;

 private:
  using Rep = std::variant<Builtin, std::shared_ptr<const detail::CustomPolicy>>;

  explicit AnyPolicy(std::shared_ptr<const detail::CustomPolicy> c) : p_(std::move(c)) {}

  template <class P>
  static Rep make(P p) {
    if constexpr (std::constructible_from<Builtin, P>)
      return Rep(std::in_place_type<Builtin>, std::move(p));
    else
      return Rep(std::make_shared<const detail::CustomModel<P>>(std::move(p)));
  }

  // The per-policy facts, for a built-in type (by its static metadata) or the custom interface.
  template <class P>
  static std::string_view name_of_policy(const P& p) {
    if constexpr (std::same_as<P, detail::CustomPolicy>)
      return p.name();
    else
      return P::name;
  }
  template <class P>
  static const PolicyInfo& info_of_policy(const P& p) {
    if constexpr (std::same_as<P, detail::CustomPolicy>)
      return p.info();
    else
      return P::info;
  }
  template <class P>
  static std::vector<std::pair<std::string, std::string>> describe_of(const P& p) {
    if constexpr (std::same_as<P, detail::CustomPolicy>)
      return p.describe();
    else
      return detail::describe_params(p);
  }
  template <class P>
  static index_t window_of(const P& p) {
    if constexpr (std::same_as<P, detail::CustomPolicy>)
      return p.window();
    else
      return detail::observation_window(p);
  }
  template <class P>
  static bool reads_scores_of(const P& p) {
    if constexpr (std::same_as<P, detail::CustomPolicy>)
      return p.reads_scores();
    else
      return detail::reads_scores<P>();
  }

 public:
  /// Calls `f(policy)` with the built-in policy by its own type, or with the
  /// `detail::CustomPolicy` interface of an engine's one.
  template <class F>
  decltype(auto) visit(F&& f) const {
    if (const auto* b = std::get_if<Builtin>(&p_)) return std::visit(f, *b);
    return f(std::as_const(*std::get<std::shared_ptr<const detail::CustomPolicy>>(p_)));
  }

  /// Any policy type: one of the library's, or one of the engine's own (`PolicyType`).
  template <PolicyType P>
  AnyPolicy(P p) : p_(make(std::move(p))) {}  // NOLINT: a policy is an AnyPolicy

  std::string_view name() const {
    return visit([](const auto& p) { return name_of_policy(p); });
  }
  const PolicyInfo& info() const {
    return visit([](const auto& p) -> const PolicyInfo& { return info_of_policy(p); });
  }
  /// The parameters as (name, JSON literal) pairs, in declaration order.
  std::vector<std::pair<std::string, std::string>> describe() const {
    return visit([](const auto& p) { return describe_of(p); });
  }
  /// The granularity the policy chooses in.
  Granularity granularity() const {
    return visit([](const auto& p) { return p.granularity(); });
  }
  /// The observation window the policy needs at least (SnapKV's, CriticalKV's `window`), 0 for
  /// none.
  index_t window() const {
    return visit([](const auto& p) { return window_of(p); });
  }
  /// False for policies that keep tokens by position (StreamingLLM, random): their `score` is
  /// the cache's shape alone.
  bool reads_scores() const {
    return visit([](const auto& p) { return reads_scores_of(p); });
  }

  /// The one-shot selection (`EvictionPolicy::select`).
  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Budget budget,
              Selection& out, Workspace& ws) const {
    visit([&](const auto& p) {
      if constexpr (std::same_as<std::decay_t<decltype(p)>, detail::CustomPolicy>)
        static_cast<const detail::CustomOps<T>&>(p).select(kv, queries, budget, out, ws);
      else
        detail::select_with(p, kv, queries, budget, out, ws);
    });
  }
  /// The policy's scores of one layer, for `choose` (see `OneShot`); valid in the caller's
  /// workspace frame.
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity g,
               Workspace& ws) const {
    return visit([&](const auto& p) -> Scores {
      if constexpr (std::same_as<std::decay_t<decltype(p)>, detail::CustomPolicy>)
        return static_cast<const detail::CustomOps<T>&>(p).score(kv, queries, g, ws);
      else
        return detail::score_with(p, kv, queries, g, ws);
    });
  }
  /// The choice half of `select`, from scores computed elsewhere (`page_size` for
  /// `Granularity::pages` on a view without a page table).
  void choose(const Scores& scores, Budget budget, Selection& out, Workspace& ws,
              index_t page_size = 0) const {
    visit([&](const auto& p) {
      if constexpr (std::same_as<std::decay_t<decltype(p)>, detail::CustomPolicy>)
        p.choose(scores, budget, out, ws, page_size);
      else
        detail::choose_with(p, scores, budget, out, ws, page_size);
    });
  }
  /// One set for several layers' scores (`Granularity::layers`), with this policy's rule and
  /// protected regions.
  void choose_layers(std::span<const Scores> layers, Budget budget, Selection& out, Workspace& ws,
                     LayerCombine combine = LayerCombine::mean) const {
    visit([&](const auto& p) {
      if constexpr (std::same_as<std::decay_t<decltype(p)>, detail::CustomPolicy>)
        p.choose_layers(layers, budget, combine, out, ws);
      else
        detail::choose_layers_with(p, layers, budget, combine, out, ws);
    });
  }
  /// A new sequence of a streaming policy; `kvevict::error` naming `policy` for a one-shot one.
  AnyStream start(const StreamConfig& config) const {
    return visit([&](const auto& p) -> AnyStream {
      using P = std::decay_t<decltype(p)>;
      if constexpr (std::same_as<P, detail::CustomPolicy>)
        return AnyStream(p.start(config));
      else if constexpr (StreamingPolicy<P>)
        return p.start(config);
      else
        detail::fail("policy", "a streaming policy (one with a decode-time form)",
                     std::string(P::name));
    });
  }
  /// The same policy with another layer's output projection (CriticalKV scores each layer with
  /// its own W_o); an unchanged copy for policies that read none.
  AnyPolicy with_output_projection(const OutputProjection& wo) const {
    if ((info().reads & reads_output_projection) == 0) return *this;
    return visit([&](const auto& p) -> AnyPolicy {
      using P = std::decay_t<decltype(p)>;
      if constexpr (std::same_as<P, detail::CustomPolicy>)
        return AnyPolicy(p.with_projection(wo));
      else
        return AnyPolicy(detail::with_projection(p, wo));
    });
  }
  /// The policy as its own type, or null (as `std::function::target`).
  template <class P>
  const P* target() const noexcept {
    if (const auto* b = std::get_if<Builtin>(&p_)) {
      if constexpr (detail::alternative_of<P, Builtin>)
        return std::get_if<P>(b);
      else
        return nullptr;
    }
    const auto& c = std::get<std::shared_ptr<const detail::CustomPolicy>>(p_);
    return static_cast<const P*>(c->target(typeid(P)));
  }

  Rep p_;
};

// -- Free functions, for code that takes any policy-like type
// --------------------------------------

/// The name of a configured policy.
inline std::string_view name_of(const AnyPolicy& policy) {
  return policy.name();
}
/// The metadata of a configured policy.
inline const PolicyInfo& info_of(const AnyPolicy& policy) {
  return policy.info();
}
/// True for policies whose cache size follows the content (they take no budget).
inline bool budget_free(const AnyPolicy& policy) {
  return policy.info().budget_free;
}
/// A configured policy's parameters as (name, JSON literal) pairs, in declaration order.
inline std::vector<std::pair<std::string, std::string>> describe(const AnyPolicy& policy) {
  return policy.describe();
}
/// The granularity a configured policy chooses in.
inline Granularity granularity_of(const AnyPolicy& policy) {
  return policy.granularity();
}
/// Starts a sequence of a streaming policy.
inline AnyStream start(const AnyPolicy& policy, const StreamConfig& config) {
  return policy.start(config);
}
/// Runs the one-shot selection of any policy.
template <Element T>
void select(const AnyPolicy& policy, const KVCache<T>& kv,
            const QueryWindow<query_type<T>>& queries, Budget budget, Selection& out,
            Workspace& ws) {
  policy.select(kv, queries, budget, out, ws);
}

}  // namespace kvevict
