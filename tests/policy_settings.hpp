// Registry settings shared by the tests that run every policy on small caches.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/registry.hpp>

#include <string>
#include <string_view>

namespace kvevict::test {

/// Settings that make a registry policy valid on a small cache (n ≥ 96 tokens, a query window
/// of at least 8, a budget of at least 24): every size-like parameter it declares — an
/// observation window, sinks, recent tokens, CORM-style w and r, a prefill stride — whose
/// default is larger than that, made small.
/// Found through the policy's own parameter list, so no test spells a policy's name.
template <class P>
Settings small_settings() {
  Settings out;
  const typename P::Params defaults{};
  for (const auto& f : P::parameters()) {
    const std::string_view n = f.name;
    const std::string value = f.get(defaults);
    // Counts only: a quoted name ("none", an enum), a 0/1 flag or a share is not a size.
    const bool count = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
    const long long d = count ? std::stoll(value) : 0;
    const auto shrink = [&](long long to) {
      if (d > to) out.emplace_back(n, std::to_string(to));
    };
    if (n == "window") shrink(8);
    if (n == "sinks") shrink(4);
    if (n == "recent" || n == "w" || n == "r") shrink(4);
    if (n == "stride") shrink(16);
  }
  return out;
}

/// `small_settings` for the policy called `name` (from a loop over `policy_names()`).
inline Settings small_settings(std::string_view name) {
  Settings out;
  for_each_policy([&]<class P>() {
    if (P::name == name) out = small_settings<P>();
  });
  return out;
}

}  // namespace kvevict::test
