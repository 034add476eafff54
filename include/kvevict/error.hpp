// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `kvevict::error`, the one exception type of the library, and the helpers that build its
/// messages.
///
/// Every message has the form `"<argument>: expected <what>, got <value>"`, so an engine author
/// reads which argument was wrong and what would have been right, e.g.
/// `"budget: expected a token count >= 1, got 0"`. Tests assert the exact text.

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kvevict {

/// Signed size and offset type of the library (element strides may exceed 2^31).
using index_t = std::int64_t;

/// Thrown for every invalid argument at a public entry point.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Builds `"<argument>: expected <expected>, got <got...>"` and throws it as `kvevict::error`.
/// Only called on the failure path, so the string work costs nothing when inputs are valid.
template <class... Got>
[[noreturn]] void fail(std::string_view argument, std::string_view expected, const Got&... got) {
  std::ostringstream out;
  out << argument << ": expected " << expected;
  if constexpr (sizeof...(Got) > 0) {
    out << ", got ";
    (out << ... << got);
  }
  throw error(out.str());
}

/// `fail` unless `condition` holds.
template <class... Got>
void require(bool condition, std::string_view argument, std::string_view expected,
             const Got&... got) {
  if (!condition) [[unlikely]]
    fail(argument, expected, got...);
}

/// Concatenates values into a string (for building `expected` texts that carry numbers).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace detail
}  // namespace kvevict
