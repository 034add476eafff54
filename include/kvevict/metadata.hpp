// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief What a policy declares about itself: its parameters (name, type, default, range,
/// doc), what it reads, its forms, and whether it takes a budget. The registry (registry.hpp),
/// the `kvevict` command, the tests and the fuzzers enumerate policies through this, so none of
/// them spells a policy's name or parameters.
///
/// A policy P provides `static constexpr PolicyInfo info` and
/// `static std::vector<Parameter<typename P::Params>> parameters()`, built with `param`:
/// \code
/// struct WindowParams {
///   kvevict::index_t window = 32;
/// };
/// struct Windowed {
///   using Params = WindowParams;
///   static std::vector<kvevict::Parameter<Params>> parameters() {
///     return {kvevict::param<&Params::window>("window", "≥ 1", "observation window, kept")};
///   }
/// };
/// \endcode

#include <cctype>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "error.hpp"

namespace kvevict {

/// Inputs a policy reads (a bit set).
enum Reads : unsigned {
  reads_nothing = 0,
  reads_keys = 1u << 0,
  reads_queries = 1u << 1,
  reads_values = 1u << 2,
  reads_output_projection = 1u << 3,  ///< W_o (CriticalKV)
  reads_attention_rows = 1u << 4,     ///< a decode step's probabilities (streaming)
};

/// A policy's self-description.
struct PolicyInfo {
  std::string_view summary;        ///< one line, with the paper
  unsigned reads = reads_nothing;  ///< what `select` (and `observe`) read, `Reads` bits
  bool streaming = false;          ///< has a decode-time form (`start`)
  bool budget_free = false;        ///< takes `Budget::none()` (CORM)
  /// Chooses by scores, so every granularity applies; false: by position (StreamingLLM,
  /// random), whose choice does not need a score per head.
  bool scores = true;
};

/// One parameter of a policy's `Params`: its name, the values it accepts, what it does, and how
/// to set it from text and print it (as a JSON literal). Built by `param<&Params::member>`.
template <class Params>
struct Parameter {
  std::string_view name;
  std::string_view type;   ///< "integer", "number", "0/1", "seed", or "one of: a, b, …"
  std::string_view range;  ///< the values it accepts beyond its type ("≥ 1", "[0, 1]")
  std::string_view doc;
  void (*set)(Params&, std::string_view name, std::string_view text);
  std::string (*get)(const Params&);
  /// For an enum, the name of every value (the registry tries each against the policy's
  /// validation to list the ones it accepts); empty for other types.
  std::vector<std::string_view> (*values)();
};

namespace detail {

/// `s` without leading and trailing white space.
inline std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

/// A `key=value` setting split at its first `=`, both sides trimmed; nullopt without an `=`
/// or with an empty key. The one key=value parser (config strings, the command's `--set` and
/// `--workload-set`).
inline std::optional<std::pair<std::string, std::string>> split_setting(std::string_view item) {
  const auto eq = item.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  const std::string_view key = trim(item.substr(0, eq));
  if (key.empty()) return std::nullopt;
  return std::pair{std::string(key), std::string(trim(item.substr(eq + 1)))};
}

inline index_t parse_int(std::string_view key, std::string_view text) {
  index_t v = 0;
  std::size_t used = 0;
  try {
    v = std::stoll(std::string(text), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) fail(key, "an integer", "'", std::string(text), "'");
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

/// An enum with `to_string(E)` and `all_values(E{})` (every value, in the order `list` shows).
template <class E>
concept named_enum = std::is_enum_v<E> && requires(E e) {
  { to_string(e) } -> std::convertible_to<std::string_view>;
  all_values(e);
};

template <named_enum E>
std::string enum_names() {
  std::string names;
  for (E v : all_values(E{})) names += (names.empty() ? "" : ", ") + std::string(to_string(v));
  return names;
}

template <class V>
V parse_value(std::string_view key, std::string_view text) {
  if constexpr (std::is_same_v<V, index_t>) {
    return parse_int(key, text);
  } else if constexpr (std::is_same_v<V, std::optional<index_t>>) {
    if (text == "none" || text == "auto") return std::nullopt;
    return parse_int(key, text);
  } else if constexpr (std::is_same_v<V, double>) {
    return parse_real(key, text);
  } else if constexpr (std::is_same_v<V, bool>) {
    return parse_bool(key, text);
  } else if constexpr (std::is_same_v<V, std::uint64_t>) {
    const index_t v = parse_int(key, text);
    if (v < 0) fail(key, "a non-negative integer", v);
    return static_cast<std::uint64_t>(v);
  } else {
    static_assert(named_enum<V>, "a parameter type the registry can parse");
    for (V v : all_values(V{}))
      if (to_string(v) == text) return v;
    fail(key, "one of " + enum_names<V>(), "'", std::string(text), "'");
  }
}

template <class V>
std::string json_of(const V& v) {
  if constexpr (std::is_same_v<V, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<V, std::optional<index_t>>) {
    return v ? std::to_string(*v) : std::string("\"none\"");
  } else if constexpr (std::is_same_v<V, double>) {
    return cat(v);
  } else if constexpr (std::is_enum_v<V>) {
    std::string quoted(1, '"');  // appended piecewise: GCC 12's -Wrestrict misfires on +
    quoted += to_string(v);
    quoted += '"';
    return quoted;
  } else {
    return std::to_string(v);
  }
}

template <class V>
constexpr std::string_view type_name() {
  if constexpr (std::is_same_v<V, bool>)
    return "0/1";
  else if constexpr (std::is_same_v<V, double>)
    return "number";
  else if constexpr (std::is_same_v<V, std::optional<index_t>>)
    return "integer or none";
  else if constexpr (std::is_same_v<V, std::uint64_t>)
    return "seed";
  else if constexpr (std::is_enum_v<V>)
    return "enum";
  else
    return "integer";
}

template <class M>
struct member_traits;
template <class C, class V>
struct member_traits<V C::*> {
  using Class = C;
  using Value = V;
};

}  // namespace detail

/// The `Parameter` of member `M` (a pointer to a `Params` member): `param<&Params::window>(
/// "window", "≥ 1", "observation window, always kept")`. Setting parses the text by the
/// member's type (integers, numbers, 0/1, `none` for optional counts, enums by name).
template <auto M>
Parameter<typename detail::member_traits<decltype(M)>::Class> param(std::string_view name,
                                                                    std::string_view range,
                                                                    std::string_view doc) {
  using Params = typename detail::member_traits<decltype(M)>::Class;
  using V = typename detail::member_traits<decltype(M)>::Value;
  return {name,
          detail::type_name<V>(),
          range,
          doc,
          [](Params& p, std::string_view key, std::string_view text) {
            p.*M = detail::parse_value<V>(key, text);
          },
          [](const Params& p) { return detail::json_of<V>(p.*M); },
          [] {
            std::vector<std::string_view> names;
            if constexpr (std::is_enum_v<V>)
              for (V v : all_values(V{})) names.push_back(to_string(v));
            return names;
          }};
}

/// Concatenates parameter lists: a policy's own and the groups it shares with others.
template <class Params>
std::vector<Parameter<Params>> join(std::initializer_list<std::vector<Parameter<Params>>> lists) {
  std::vector<Parameter<Params>> out;
  for (const auto& list : lists) out.insert(out.end(), list.begin(), list.end());
  return out;
}

/// A policy's parameters: its own (`own`), then the ones policies share, declared here once and
/// present when `Params` has the member — `reduce` (the GQA reduction), `granularity` (the unit
/// of the choice), `seed` (keys the random draws with the layer and head).
template <class Params>
std::vector<Parameter<Params>> with_common_parameters(std::vector<Parameter<Params>> own) {
  if constexpr (requires { &Params::reduce; })
    own.push_back(
        param<&Params::reduce>("reduce", "", "GQA reduction over a KV head's query heads"));
  if constexpr (requires { &Params::granularity; })
    own.push_back(param<&Params::granularity>("granularity", "", "unit of the choice"));
  if constexpr (requires { &Params::seed; })
    own.push_back(
        param<&Params::seed>("seed", "", "keys the random draws with the layer and head"));
  return own;
}

}  // namespace kvevict
