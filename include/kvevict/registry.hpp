// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Every policy by name: how an engine builds one from a config string
/// (`"snapkv:window=32,kernel=7"`), registers a policy of its own under a name, and lists what
/// each policy offers — all from each policy's own metadata (`P::info`, `P::parameters()`), so
/// the command's `list`, its help and what parses cannot disagree.
///
/// **Example**:
/// \code
/// kvevict::AnyPolicy p = kvevict::parse_policy("h2o:recent=128");
/// p.select(kv, queries, kvevict::Budget::ratio(0.2), keep, ws);
///
/// kvevict::register_policy<MyScorer>();          // an engine's own policy (see AnyPolicy)
/// kvevict::AnyPolicy mine = kvevict::parse_policy("my_scorer:alpha=0.5");
/// \endcode
///
/// Config strings: a name, then optionally `:` and comma-separated `key=value` settings; spaces
/// around names, keys and values are ignored; each key at most once. Errors name the string:
/// `"windw (in policy 'snapkv:windw=32'): expected a parameter of snapkv (window, kernel, …),
/// got 'windw'"`.
///
/// Thread safety: `register_policy` may run concurrently with the look-ups (one mutex); a
/// registered name stays for the life of the program.

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "any_policy.hpp"
#include "error.hpp"
#include "metadata.hpp"
#include "output_projection.hpp"

namespace kvevict {

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

/// One parameter of a registered policy, as `kvevict list` shows it.
struct ParameterInfo {
  std::string name;
  std::string type;           ///< "integer", "number", "0/1", "seed", "integer or none", "enum"
  std::string range;          ///< the values it accepts beyond its type ("≥ 1", "[0, 1]")
  std::string doc;            ///< what it does
  std::string default_value;  ///< as a JSON literal
  /// For an enum: the values the policy accepts, each tried against the policy's own
  /// validation (so `list` shows what parses, not what a comment says).
  std::vector<std::string> values;
};

/// A registered policy: its name, metadata and parameters.
struct PolicyEntry {
  std::string_view name;
  const PolicyInfo* info = nullptr;
  std::vector<ParameterInfo> parameters;
  bool builtin = false;  ///< one of the library's (false: `register_policy`)
  /// Builds the policy; `spec` names it in errors.
  AnyPolicy (*make)(const PolicyOptions& options, std::string_view spec) = nullptr;
};

namespace detail {

/// Calls `f.template operator()<P>()` for every policy type of the library, in the table's
/// order.
template <class F, std::size_t... I>
void for_each_builtin(F&& f, std::index_sequence<I...>) {
  (f.template operator()<std::variant_alternative_t<I, AnyPolicy::Builtin>>(), ...);
}

template <class P>
std::string parameter_names() {
  std::string known;
  for (const auto& f : P::parameters()) known += (known.empty() ? "" : ", ") + std::string(f.name);
  return known.empty() ? "none" : known;
}

/// `text` with every byte outside printable ASCII as `\xNN`, so a message naming it stays one
/// readable line (and a NUL cannot cut it short).
inline std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) {
      out += c;
    } else {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  return out;
}

/// Re-throws `e` with `(in policy 'spec')` after its argument, so an error from a parameter's
/// parser or a policy's validation names the config string it came from.
[[noreturn]] inline void rethrow_in(const error& e, std::string_view spec) {
  std::string m = e.what();
  const auto at = m.find(": expected ");
  m.insert(at == std::string::npos ? 0 : at, cat(" (in policy '", spec, "')"));
  throw error(m);
}

/// Runs P's validation of `params` without building it (P::check when it has one, else its
/// constructor; a policy that needs W_o and has no `check` is not probed).
template <class P>
bool accepts(const typename P::Params& params) {
  try {
    if constexpr (requires { P::check(params); })
      P::check(params);
    else if constexpr (std::is_constructible_v<P, typename P::Params>)
      (void)P(params);
    return true;
  } catch (const error&) {
    return false;
  }
}

template <class P>
std::vector<ParameterInfo> parameter_infos() {
  using Params = typename P::Params;
  const Params defaults{};
  std::vector<ParameterInfo> out;
  for (const auto& f : P::parameters()) {
    ParameterInfo p{std::string(f.name), std::string(f.type), std::string(f.range),
                    std::string(f.doc),  f.get(defaults),     {}};
    for (const std::string_view v : f.values()) {
      Params probe = defaults;
      f.set(probe, f.name, v);
      if (accepts<P>(probe)) p.values.emplace_back(v);
    }
    out.push_back(std::move(p));
  }
  return out;
}

/// Builds P from `options` (see `make_policy`); errors name `spec`.
template <class P>
AnyPolicy build(const PolicyOptions& options, std::string_view spec) {
  using Params = typename P::Params;
  Params params;
  const auto fields = P::parameters();
  try {
    if constexpr (requires { params.seed; })
      if (options.seed) params.seed = *options.seed;
    if constexpr (requires { params.granularity; })
      if (options.granularity) params.granularity = *options.granularity;
    for (std::size_t i = 0; i < options.settings.size(); ++i) {
      const std::string& key = options.settings[i].first;     // not a structured binding: clang
      const std::string& value = options.settings[i].second;  // 14 cannot capture one
      const auto f = std::find_if(fields.begin(), fields.end(),
                                  [&](const auto& field) { return field.name == key; });
      if (f == fields.end())
        fail(printable(key), cat("a parameter of ", P::name, " (", parameter_names<P>(), ")"), "'",
             printable(key), "'");
      for (std::size_t j = 0; j < i; ++j)
        if (options.settings[j].first == key)
          fail(key, "each parameter set once", "'", options.settings[j].second, "' and then '",
               value, "'");
      f->set(params, f->name, value);
    }
    if constexpr (std::is_constructible_v<P, Params, OutputProjection>) {
      if (options.wo == nullptr)
        fail("wo", cat("the output projection W_o (PolicyOptions::wo) for ", P::name), "none");
      return AnyPolicy(P(params, *options.wo));
    } else {
      return AnyPolicy(P(params));
    }
  } catch (const error& e) {
    rethrow_in(e, spec);
  }
}

template <class P>
PolicyEntry entry_of(bool builtin) {
  return {P::name, &P::info, parameter_infos<P>(), builtin, &build<P>};
}

/// Every registered policy: the library's first, in their order, then the engine's in the order
/// they were registered. Entries never move (a deque), so references to them stay valid.
class Registry {
 public:
  static Registry& instance() {
    static Registry r;
    return r;
  }

  template <class P>
  void add() {
    const std::lock_guard lock(mutex_);
    check_name(P::name);
    for (const PolicyEntry& e : entries_)
      if (e.name == P::name)
        fail("policy", "a name no policy has yet", "'", std::string(P::name), "', taken");
    entries_.push_back(entry_of<P>(false));
  }

  /// The entry called `name`; throws naming the known ones.
  const PolicyEntry& find(std::string_view name) const {
    const std::lock_guard lock(mutex_);
    for (const PolicyEntry& e : entries_)
      if (e.name == name) return e;
    std::string known;
    for (const PolicyEntry& e : entries_)
      known += (known.empty() ? "" : ", ") + std::string(e.name);
    fail("policy", cat("one of ", known), "'", std::string(name), "'");
  }

  std::vector<const PolicyEntry*> all() const {
    const std::lock_guard lock(mutex_);
    std::vector<const PolicyEntry*> out;
    for (const PolicyEntry& e : entries_) out.push_back(&e);
    return out;
  }

 private:
  Registry() {
    for_each_builtin([&]<class P>() { entries_.push_back(entry_of<P>(true)); },
                     std::make_index_sequence<std::variant_size_v<AnyPolicy::Builtin>>());
  }

  static void check_name(std::string_view name) {
    const bool ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    });
    if (!ok)
      fail("policy",
           "a name of letters, digits, '_', '-' or '.' (it is parsed from config strings)", "'",
           std::string(name), "'");
  }

  mutable std::mutex mutex_;
  std::deque<PolicyEntry> entries_;
};

/// The policy and its settings as one normalised config string, printable, for messages.
inline std::string spec_text(std::string_view name, const Settings& settings) {
  std::string spec(name);
  for (std::size_t i = 0; i < settings.size(); ++i)
    spec += cat(i == 0 ? ":" : ",", settings[i].first, "=", settings[i].second);
  return printable(spec);
}

}  // namespace detail

/// Registers policy type P under `P::name`, so `make_policy`, `parse_policy`, `policy_names`,
/// `kvevict list`-style listings and everything that takes an `AnyPolicy` (`select_layers`,
/// `eval::run`, `PeriodicDriver`, the llama.cpp adapter) can use it by name. P is a
/// `PolicyType`; a one-shot policy is easiest written as `class P : public OneShot<P, Params>`
/// with a `rule` and a `score` (examples/custom_policy.cpp). Its `select`/`score` are compiled
/// for every element type a `KVCache` may hold: a policy that serves only some may constrain
/// them, and is then refused with a `kvevict::error` for the others. Throws `kvevict::error`
/// naming `policy` for a name already taken or one a config string cannot spell.
template <PolicyType P>
void register_policy() {
  detail::Registry::instance().add<P>();
}

/// Calls `f.template operator()<P>()` for every policy type of the library, in the table's
/// order (registered policies are reached by name: `policy_entries`).
template <class F>
void for_each_policy(F&& f) {
  detail::for_each_builtin(f, std::make_index_sequence<std::variant_size_v<AnyPolicy::Builtin>>());
}

/// Every registered policy (the library's, then the engine's), with its parameters.
inline std::vector<const PolicyEntry*> policy_entries() {
  return detail::Registry::instance().all();
}

/// Names of every registered policy, in order.
inline std::vector<std::string_view> policy_names() {
  std::vector<std::string_view> names;
  for (const PolicyEntry* e : policy_entries()) names.push_back(e->name);
  return names;
}

/// The metadata of the policy called `name`; throws `kvevict::error` for an unknown name.
inline const PolicyInfo& policy_info(std::string_view name) {
  return *detail::Registry::instance().find(name).info;
}

/// Builds the policy called `name` with `options`. Throws `kvevict::error` for an unknown
/// policy, an unknown or repeated parameter (the message lists the known ones), a value that
/// does not parse or validate, or a missing W_o — each naming the policy and its settings.
inline AnyPolicy make_policy(std::string_view name, const PolicyOptions& options = {}) {
  const PolicyEntry& e = detail::Registry::instance().find(name);
  return e.make(options, detail::spec_text(name, options.settings));
}

/// Builds a policy from a config string: its name, then optionally `:` and comma-separated
/// `key=value` settings — `"snapkv"`, `"snapkv:window=64, kernel=5, pool=avg"`. `options`
/// supplies W_o, a default seed and granularity, and settings applied before the string's (a
/// key set in both is an error). Errors name the policy with every setting, normalised
/// (`'snapkv:window=64,kernel=5'`).
inline AnyPolicy parse_policy(std::string_view spec, PolicyOptions options = {}) {
  const auto colon = spec.find(':');
  const std::string_view name = detail::trim(spec.substr(0, colon));
  if (colon != std::string_view::npos) {
    std::string_view rest = spec.substr(colon + 1);
    for (;;) {
      const auto comma = rest.find(',');
      const std::string_view item = rest.substr(0, comma);
      auto setting = detail::split_setting(item);
      if (!setting)
        detail::fail(detail::cat("policy '", detail::printable(spec), "'"),
                     "settings as key=value, separated by commas", "'",
                     std::string(detail::trim(item)), "'");
      options.settings.push_back(std::move(*setting));
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
  }
  const PolicyEntry& e = detail::Registry::instance().find(name);
  return e.make(options, detail::spec_text(name, options.settings));
}

}  // namespace kvevict
