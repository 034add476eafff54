// What the fuzz targets share: how an invariant fails, and what every error message must be.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/error.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvevict::fuzz {

/// Reports a broken invariant and aborts, so that libFuzzer saves the input.
[[noreturn]] inline void broken(const char* what, const std::string& detail = "") {
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
