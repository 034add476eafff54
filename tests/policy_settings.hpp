// Registry settings shared by the tests that run every policy on small caches.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/eval/registry.hpp>

#include <string_view>

namespace kvevict::test {

/// Settings that make every registry policy valid on a small cache: n ≥ 96 tokens, a query
/// window of at least 8 and a budget of at least 24 (the defaults' windows are 32 or 64).
inline eval::Settings small_settings(std::string_view name) {
  if (name == "snapkv" || name == "criticalkv") return {{"window", "8"}};
  if (name == "nacl") return {{"sinks", "2"}, {"recent", "4"}};
  if (name == "corm") return {{"w", "4"}, {"r", "4"}};
  if (name == "cascade") return {{"sinks", "4"}, {"stride", "16"}};
  return {};
}

}  // namespace kvevict::test
