// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Every policy by name, with its parameters as `key=value` text: what the `kvevict`
/// command and the evaluation harness use to build and describe policies.

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "../error.hpp"
#include "../kvevict.hpp"

namespace kvevict::eval {

/// `key=value` parameter settings, as `--set` gives them.
using Settings = std::vector<std::pair<std::string, std::string>>;

/// A policy of any kind, configured.
using AnyPolicy =
    std::variant<StreamingLLM, RandomEviction, SnapKV, TOVA, H2O, NACL, CriticalKV, CORM, Cascade>;

/// One parameter of a policy's `Params`, by pointer to member.
template <class Params>
struct Field {
  using Member = std::variant<index_t Params::*, double Params::*, bool Params::*,
                              std::uint64_t Params::*, Pool Params::*, GroupReduce Params::*,
                              NACLPreset Params::*, NormKind Params::*, CORMThreshold Params::*>;
  std::string_view name;
  Member member;
  std::string_view help;
};

/// What the command line knows about a policy type.
template <class P>
struct PolicyTraits;

template <>
struct PolicyTraits<StreamingLLM> {
  using Params = StreamingLLM::Params;
  static constexpr std::string_view summary = "attention sinks + recent window (Xiao et al. 2023)";
  static std::vector<Field<Params>> fields() {
    return {{"sinks", &Params::sinks, "first tokens always kept"}};
  }
};

template <>
struct PolicyTraits<RandomEviction> {
  using Params = RandomEviction::Params;
  static constexpr std::string_view summary = "uniform random eviction (baseline)";
  static std::vector<Field<Params>> fields() {
    return {{"sinks", &Params::sinks, "first tokens always kept"},
            {"recent", &Params::recent, "last tokens always kept"}};
  }
};

template <>
struct PolicyTraits<SnapKV> {
  using Params = SnapKV::Params;
  static constexpr std::string_view summary =
      "pooled observation-window attention (Li et al. 2024)";
  static std::vector<Field<Params>> fields() {
    return {{"window", &Params::window, "observation window: the last queries, always kept"},
            {"kernel", &Params::kernel, "pooling kernel"},
            {"pool", &Params::pool, "pooling: max or avg"},
            {"reduce", &Params::reduce, "GQA reduction: mean, max or sum"},
            {"ada", &Params::ada, "AdaKV head-adaptive budgets (0/1)"},
            {"alpha_safeguard", &Params::alpha_safeguard, "AdaKV: minimum share per head"}};
  }
};

template <>
struct PolicyTraits<TOVA> {
  using Params = TOVA::Params;
  static constexpr std::string_view summary =
      "last query's head-mean attention, shared set (Oren et al. 2024)";
  static std::vector<Field<Params>> fields() { return {}; }
};

template <>
struct PolicyTraits<H2O> {
  using Params = H2O::Params;
  static constexpr std::string_view summary =
      "accumulated attention heavy hitters + recent window (Zhang et al. 2023)";
  static std::vector<Field<Params>> fields() {
    return {{"recent", &Params::recent, "recent window R (-1: half the budget)"},
            {"reduce", &Params::reduce, "GQA reduction per query: mean, max or sum"}};
  }
};

template <>
struct PolicyTraits<NACL> {
  using Params = NACL::Params;
  static constexpr std::string_view summary =
      "proxy-token top-k + attention-weighted random eviction, per head (Chen et al. 2024)";
  static std::vector<Field<Params>> fields() {
    return {
        {"sinks", &Params::sinks, "first tokens always kept"},
        {"recent", &Params::recent, "last tokens always kept"},
        {"random_share", &Params::random_share, "share of the unprotected budget sampled"},
        {"causal", &Params::causal, "proxies see only earlier keys (0/1)"},
        {"reduce", &Params::reduce, "GQA reduction: sum, mean or max"},
        {"preset", &Params::preset, "paper split: none, paper10, paper20, paper30, long_context"}};
  }
};

template <>
struct PolicyTraits<CriticalKV> {
  using Params = CriticalKV::Params;
  static constexpr std::string_view summary =
      "attention, then attention x projected value norm |V W_o| (Feng et al. 2025); needs --wo";
  static std::vector<Field<Params>> fields() {
    return {{"window", &Params::window, "SnapKV observation window, always kept"},
            {"kernel", &Params::kernel, "SnapKV pooling kernel"},
            {"pool", &Params::pool, "SnapKV pooling: max or avg"},
            {"reduce", &Params::reduce, "GQA reduction of the attention: mean, max or sum"},
            {"first_stage_ratio", &Params::first_stage_ratio, "budget share chosen by attention"},
            {"epsilon", &Params::epsilon, "added to the attention before weighting"},
            {"norm", &Params::norm, "projected value norm: l1 or l2"},
            {"ada", &Params::ada, "AdaKV head-adaptive budgets (0/1)"},
            {"alpha_safeguard", &Params::alpha_safeguard, "AdaKV: minimum share per head"}};
  }
};

template <>
struct PolicyTraits<CORM> {
  using Params = CORM::Params;
  static constexpr std::string_view summary =
      "budget-free: evict keys no recent query found important (Dai et al. 2024)";
  static std::vector<Field<Params>> fields() {
    return {{"w", &Params::w, "recent queries a key must stay unimportant for"},
            {"r", &Params::r, "recent keys never evicted"},
            {"threshold", &Params::threshold, "importance threshold: t (1/t) or live (1/|cache|)"},
            {"max_tokens", &Params::max_tokens, "cap on the cache, 0 = none (extension)"}};
  }
};

template <>
struct PolicyTraits<Cascade> {
  using Params = Cascade::Params;
  static constexpr std::string_view summary =
      "sinks + cascading sub-caches keeping every 2^c-th token (Willette et al. 2024)";
  static std::vector<Field<Params>> fields() {
    return {{"sinks", &Params::sinks, "first tokens always kept"},
            {"cascades", &Params::cascades, "sub-caches C (W = (budget - sinks) / C slots each)"},
            {"beta", &Params::beta, "EMA decay of the attention scores"},
            {"reduce", &Params::reduce, "GQA reduction: max, mean or sum"},
            {"stride", &Params::stride, "prefill chunk length"}};
  }
};

namespace detail {

using kvevict::detail::cat;

/// Every value of an enum parameter, in the order `list` shows them.
template <class E>
constexpr auto enum_values() {
  if constexpr (std::is_same_v<E, Pool>)
    return std::array{Pool::max, Pool::avg};
  else if constexpr (std::is_same_v<E, GroupReduce>)
    return std::array{GroupReduce::mean, GroupReduce::max, GroupReduce::sum};
  else if constexpr (std::is_same_v<E, NormKind>)
    return std::array{NormKind::l1, NormKind::l2};
  else if constexpr (std::is_same_v<E, CORMThreshold>)
    return std::array{CORMThreshold::t, CORMThreshold::live};
  else
    return std::array{NACLPreset::none, NACLPreset::paper10, NACLPreset::paper20,
                      NACLPreset::paper30, NACLPreset::long_context};
}

template <class E>
constexpr bool is_enum_param = std::is_enum_v<E>;
using kvevict::detail::fail;

inline index_t parse_int(std::string_view key, std::string_view text) {
  index_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    fail(key, "an integer", "'", std::string(text), "'");
  return v;
}

inline double parse_real(std::string_view key, std::string_view text) {
  // std::from_chars for double is not in every standard library this builds with.
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(std::string(text), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || !std::isfinite(v))
    fail(key, "a finite number", "'", std::string(text), "'");
  return v;
}

inline bool parse_bool(std::string_view key, std::string_view text) {
  if (text == "1" || text == "true") return true;
  if (text == "0" || text == "false") return false;
  fail(key, "0 or 1", "'", std::string(text), "'");
}

template <class Params>
void set_field(Params& p, const Field<Params>& f, std::string_view text) {
  std::visit(
      [&](auto member) {
        using V = std::remove_cvref_t<decltype(p.*member)>;
        if constexpr (std::is_same_v<V, index_t>) {
          p.*member = parse_int(f.name, text);
        } else if constexpr (std::is_same_v<V, double>) {
          p.*member = parse_real(f.name, text);
        } else if constexpr (std::is_same_v<V, bool>) {
          p.*member = parse_bool(f.name, text);
        } else if constexpr (std::is_same_v<V, std::uint64_t>) {
          const index_t v = parse_int(f.name, text);
          if (v < 0) fail(f.name, "a non-negative integer", v);
          p.*member = static_cast<std::uint64_t>(v);
        } else if constexpr (is_enum_param<V>) {
          std::string names;
          for (V v : enum_values<V>()) {
            if (to_string(v) == text) {
              p.*member = v;
              return;
            }
            names += (names.empty() ? "" : ", ") + std::string(to_string(v));
          }
          fail(f.name, "one of " + names, "'", std::string(text), "'");
        }
      },
      f.member);
}

/// The value of a field as a JSON literal.
template <class Params>
std::string json_value(const Params& p, const Field<Params>& f) {
  return std::visit(
      [&](auto member) -> std::string {
        using V = std::remove_cvref_t<decltype(p.*member)>;
        const V& v = p.*member;
        if constexpr (std::is_same_v<V, bool>)
          return v ? "true" : "false";
        else if constexpr (is_enum_param<V>) {
          std::string quoted(1, '"');  // appended piecewise: GCC 12's -Wrestrict misfires on +
          quoted += to_string(v);
          quoted += '"';
          return quoted;
        } else if constexpr (std::is_same_v<V, double>)
          return cat(v);
        else
          return std::to_string(v);
      },
      f.member);
}

template <class F, std::size_t... I>
void for_each_alternative(F&& f, std::index_sequence<I...>) {
  (f.template operator()<std::variant_alternative_t<I, AnyPolicy>>(), ...);
}

}  // namespace detail

/// Calls `f.template operator()<P>()` for every policy type, in the table's order.
template <class F>
void for_each_policy(F&& f) {
  detail::for_each_alternative(f, std::make_index_sequence<std::variant_size_v<AnyPolicy>>());
}

/// Names of every policy, in order.
inline std::vector<std::string_view> policy_names() {
  std::vector<std::string_view> names;
  for_each_policy([&]<class P>() { names.push_back(P::name); });
  return names;
}

/// Builds the policy called `name` from `key=value` settings. `seed` goes to policies that
/// draw random numbers; `shared` selects one set for all heads where a policy offers both;
/// `wo` (the layer's output projection, which must outlive the policy) to policies that read
/// W_o, and is ignored by the others. Throws `kvevict::error` for an unknown policy, an unknown
/// parameter (the message lists the known ones), a value that does not parse or validate, or a
/// missing W_o.
inline AnyPolicy make_policy(std::string_view name, const Settings& settings = {},
                             std::uint64_t seed = 0, bool shared = false,
                             const OutputProjection* wo = nullptr) {
  std::optional<AnyPolicy> out;
  for_each_policy([&]<class P>() {
    if (P::name != name || out) return;
    using Traits = PolicyTraits<P>;
    typename P::Params params;
    if constexpr (requires { params.seed; }) params.seed = seed;
    if constexpr (requires { params.shared; })
      if (shared) params.shared = true;
    const auto fields = Traits::fields();
    for (const auto& setting : settings) {
      const std::string& key = setting.first;     // not a structured binding: clang < 16 cannot
      const std::string& value = setting.second;  // capture those in the lambda below
      const auto it =
          std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.name == key; });
      if (it == fields.end()) {
        std::string known;
        for (const auto& f : fields) known += (known.empty() ? "" : ", ") + std::string(f.name);
        kvevict::detail::fail(
            "--set",
            detail::cat("a parameter of ", name, " (", known.empty() ? "none" : known, ")"), "'",
            key, "'");
      }
      detail::set_field(params, *it, value);
    }
    if constexpr (std::is_constructible_v<P, typename P::Params, OutputProjection>) {
      if (wo == nullptr)
        kvevict::detail::fail("--wo", detail::cat("the output projection W_o for ", P::name),
                              "none");
      out.emplace(std::in_place_type<P>, params, *wo);
    } else {
      out.emplace(std::in_place_type<P>, params);
    }
  });
  if (!out) {
    std::string known;
    for (auto n : policy_names()) known += (known.empty() ? "" : ", ") + std::string(n);
    kvevict::detail::fail("--policy", detail::cat("one of ", known), "'", std::string(name), "'");
  }
  return std::move(*out);
}

/// True for policies whose cache size follows the content (they take no budget).
inline bool budget_free(const AnyPolicy& policy) {
  return std::visit(
      [](const auto& p) {
        return requires {
          std::decay_t<decltype(p)>::budget_free;
        };
      },
      policy);
}

/// True for the policy called `name` when it is budget-free (false for unknown names).
inline bool is_budget_free(std::string_view name) {
  bool out = false;
  for_each_policy([&]<class P>() {
    if (P::name == name) out = requires {
        P::budget_free;
      };
  });
  return out;
}

/// The name of a configured policy.
inline std::string_view name_of(const AnyPolicy& policy) {
  return std::visit([](const auto& p) { return std::decay_t<decltype(p)>::name; }, policy);
}

/// A configured policy's parameters as (name, JSON literal) pairs, `seed`/`shared` included
/// where the policy has them.
inline std::vector<std::pair<std::string, std::string>> describe(const AnyPolicy& policy) {
  return std::visit(
      [](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        std::vector<std::pair<std::string, std::string>> out;
        const auto& params = p.params();
        for (const auto& f : PolicyTraits<P>::fields())
          out.emplace_back(std::string(f.name), detail::json_value(params, f));
        if constexpr (requires { params.seed; })
          out.emplace_back("seed", std::to_string(params.seed));
        if constexpr (requires { params.shared; })
          out.emplace_back("shared", params.shared ? "true" : "false");
        return out;
      },
      policy);
}

/// Runs the one-shot selection of any policy.
template <Element T>
void select(const AnyPolicy& policy, const KVCache<T>& kv, const QueryWindow<T>& queries,
            Budget budget, Selection& out, Workspace& ws) {
  std::visit([&](const auto& p) { p.select(kv, queries, budget, out, ws); }, policy);
}

}  // namespace kvevict::eval
