// What the fuzz targets share: how an invariant fails, and what every error message must be.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/error.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvevict::fuzz {

/// What the current input did so far, one line per call and outcome: printed when an invariant
/// breaks, so a finding can be diagnosed from the log alone. Cleared at the start of each input.
inline std::string& trace() {
  static std::string text;
  return text;
}

/// Appends one line to the trace.
template <class... Parts>
void note(const Parts&... parts) {
  std::string& t = trace();
  ((t += parts), ...);
  t += '\n';
}

/// Reports a broken invariant (after the trace of calls that led to it) and aborts, so that
/// libFuzzer saves the input.
[[noreturn]] inline void broken(const char* what, const std::string& detail = "") {
  if (!trace().empty()) std::fprintf(stderr, "fuzz: calls of this input:\n%s", trace().c_str());
  std::fprintf(stderr, "fuzz: invariant broken: %s %s\n", what, detail.c_str());
  std::abort();
}

/// Every kvevict::error reads "<argument>: expected …".
inline void check_message(const kvevict::error& e) {
  const std::string what = e.what();
  const auto colon = what.find(": expected ");
  if (colon == std::string::npos || colon == 0) broken("message names the argument", what);
}

}  // namespace kvevict::fuzz
