// The version macros agree with the CMake package version (one source: version.hpp).
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/version.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

TEST(Version, MacrosMatchThePackage) {
  const std::string macros = std::to_string(KVEVICT_VERSION_MAJOR) + "." +
                             std::to_string(KVEVICT_VERSION_MINOR) + "." +
                             std::to_string(KVEVICT_VERSION_PATCH);
  EXPECT_EQ(macros, KVEVICT_PACKAGE_VERSION);
  EXPECT_EQ(KVEVICT_VERSION,
            KVEVICT_VERSION_MAJOR * 10000 + KVEVICT_VERSION_MINOR * 100 + KVEVICT_VERSION_PATCH);
}

}  // namespace
