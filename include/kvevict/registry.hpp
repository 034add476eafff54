// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Every policy by name: how an engine builds one from a config string
/// (`"snapkv:window=32,kernel=7"`), and how the command, tests and fuzzers enumerate them
/// (`for_each_policy`) through each policy's own metadata (`P::info`, `P::parameters()`).
///
/// **Example**:
/// \code
/// kvevict::AnyPolicy p = kvevict::parse_policy("h2o:recent=128");
/// kvevict::select(p, kv, queries, kvevict::Budget::ratio(0.2), keep, ws);
/// \endcode

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "budget.hpp"
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
#include "query_window.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

/// A policy of any kind, configured. Adding a policy: its header, and its type here.
using AnyPolicy = std::variant<StreamingLLM, RandomEviction, SnapKV, TOVA, H2O, NACL, CriticalKV,
                               CORM, Cascade, KNorm, KeyDiff, ExpectedAttention, LagKV>;

/// `key=value` parameter settings, in order.
using Settings = std::vector<std::pair<std::string, std::string>>;

/// How `make_policy` builds a policy beyond its parameters.
struct PolicyOptions {
  Settings settings = {};  ///< parameter settings (`window=32`), applied in order
  /// Where a policy has a `seed` parameter, its value unless `settings` sets it.
  std::optional<std::uint64_t> seed = std::nullopt;
  /// Where a policy has a `granularity` parameter, its value unless `settings` sets it.
  std::optional<Granularity> granularity = std::nullopt;
  /// The layer's output projection for policies that read W_o (it must outlive the policy);
  /// ignored by the others.
  const OutputProjection* wo = nullptr;
};

namespace detail {

template <class F, std::size_t... I>
void for_each_alternative(F&& f, std::index_sequence<I...>) {
  (f.template operator()<std::variant_alternative_t<I, AnyPolicy>>(), ...);
}

template <class P>
const Parameter<typename P::Params>* find_parameter(
    const std::vector<Parameter<typename P::Params>>& params, std::string_view key) {
  const auto it =
      std::find_if(params.begin(), params.end(), [&](const auto& f) { return f.name == key; });
  return it == params.end() ? nullptr : &*it;
}

template <class P>
std::string parameter_names() {
  std::string known;
  for (const auto& f : P::parameters()) known += (known.empty() ? "" : ", ") + std::string(f.name);
  return known.empty() ? "none" : known;
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

/// The metadata of the policy called `name`; throws `kvevict::error` for an unknown name.
inline const PolicyInfo& policy_info(std::string_view name) {
  const PolicyInfo* out = nullptr;
  for_each_policy([&]<class P>() {
    if (P::name == name) out = &P::info;
  });
  if (out == nullptr) {
    std::string known;
    for (auto n : policy_names()) known += (known.empty() ? "" : ", ") + std::string(n);
    detail::fail("policy", detail::cat("one of ", known), "'", std::string(name), "'");
  }
  return *out;
}

/// Builds the policy called `name` with `options`. Throws `kvevict::error` for an unknown
/// policy, an unknown parameter (the message lists the known ones), a value that does not parse
/// or validate, or a missing W_o.
inline AnyPolicy make_policy(std::string_view name, const PolicyOptions& options = {}) {
  policy_info(name);  // names the known policies when `name` is not one
  std::optional<AnyPolicy> out;
  for_each_policy([&]<class P>() {
    if (P::name != name || out) return;
    using Params = typename P::Params;
    Params params;
    const auto fields = P::parameters();
    if constexpr (requires { params.seed; })
      if (options.seed) params.seed = *options.seed;
    if constexpr (requires { params.granularity; })
      if (options.granularity) params.granularity = *options.granularity;
    for (const auto& setting : options.settings) {
      const auto* f = detail::find_parameter<P>(fields, setting.first);
      if (f == nullptr)
        detail::fail("--set",
                     detail::cat("a parameter of ", name, " (", detail::parameter_names<P>(), ")"),
                     "'", setting.first, "'");
      f->set(params, f->name, setting.second);
    }
    if constexpr (std::is_constructible_v<P, Params, OutputProjection>) {
      if (options.wo == nullptr)
        detail::fail("--wo", detail::cat("the output projection W_o for ", P::name), "none");
      out.emplace(std::in_place_type<P>, params, *options.wo);
    } else {
      out.emplace(std::in_place_type<P>, params);
    }
  });
  return std::move(*out);
}

/// Builds a policy from a config string: its name, then optionally `:` and comma-separated
/// `key=value` settings — `"snapkv"`, `"snapkv:window=64,kernel=5,pool=avg"`. `options`
/// supplies W_o, a default seed and granularity (settings in the string come after its own).
inline AnyPolicy parse_policy(std::string_view spec, PolicyOptions options = {}) {
  const auto colon = spec.find(':');
  const std::string_view name = spec.substr(0, colon);
  if (colon != std::string_view::npos) {
    std::string_view rest = spec.substr(colon + 1);
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      const std::string_view item = rest.substr(0, comma);
      const auto eq = item.find('=');
      if (eq == std::string_view::npos || eq == 0)
        detail::fail("policy", "settings as key=value, separated by commas", "'", std::string(item),
                     "' in '", std::string(spec), "'");
      options.settings.emplace_back(std::string(item.substr(0, eq)),
                                    std::string(item.substr(eq + 1)));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  return make_policy(name, options);
}

/// The name of a configured policy.
inline std::string_view name_of(const AnyPolicy& policy) {
  return std::visit([](const auto& p) { return std::decay_t<decltype(p)>::name; }, policy);
}

/// The metadata of a configured policy.
inline const PolicyInfo& info_of(const AnyPolicy& policy) {
  return std::visit(
      [](const auto& p) -> const PolicyInfo& { return std::decay_t<decltype(p)>::info; }, policy);
}

/// True for policies whose cache size follows the content (they take no budget).
inline bool budget_free(const AnyPolicy& policy) {
  return info_of(policy).budget_free;
}

/// A configured policy's parameters as (name, JSON literal) pairs, in declaration order.
inline std::vector<std::pair<std::string, std::string>> describe(const AnyPolicy& policy) {
  return std::visit(
      [](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        std::vector<std::pair<std::string, std::string>> out;
        for (const auto& f : P::parameters())
          out.emplace_back(std::string(f.name), f.get(p.params()));
        return out;
      },
      policy);
}

/// The granularity a configured policy chooses in.
inline Granularity granularity_of(const AnyPolicy& policy) {
  return std::visit([](const auto& p) { return p.granularity(); }, policy);
}

/// A started sequence of any streaming policy.
using AnyStream = std::variant<Stream<StreamingLLM>, Stream<RandomEviction>, Stream<TOVA>,
                               Stream<H2O>, Stream<CORM>, Stream<Cascade>>;

/// Starts a sequence of a streaming policy (`info.streaming`); throws `kvevict::error` naming
/// `policy` for a one-shot-only one.
inline AnyStream start(const AnyPolicy& policy, const StreamConfig& config) {
  return std::visit(
      [&](const auto& p) -> AnyStream {
        using P = std::decay_t<decltype(p)>;
        if constexpr (StreamingPolicy<P>)
          return p.start(config);
        else
          detail::fail("policy", "a streaming policy (one with a decode-time form)",
                       std::string(P::name));
      },
      policy);
}

/// Runs the one-shot selection of any policy.
template <Element T>
void select(const AnyPolicy& policy, const KVCache<T>& kv,
            const QueryWindow<query_type<T>>& queries, Budget budget, Selection& out,
            Workspace& ws) {
  std::visit([&](const auto& p) { p.select(kv, queries, budget, out, ws); }, policy);
}

}  // namespace kvevict
