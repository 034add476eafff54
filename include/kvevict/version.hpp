// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The library's version. CMake's `project(VERSION …)` reads it from here, so the
/// installed package version and these macros cannot disagree.
///
/// 0.2: the score → choose → apply pipeline (`Scores`, `choose`, `OneShot`), streaming state as
/// `Stream<P>` returned by `start`, `Granularity`, the registry and policy metadata in the core.

#define KVEVICT_VERSION_MAJOR 0
#define KVEVICT_VERSION_MINOR 3
#define KVEVICT_VERSION_PATCH 0

/// MAJOR · 10000 + MINOR · 100 + PATCH, for `#if KVEVICT_VERSION >= 200`.
#define KVEVICT_VERSION \
  (KVEVICT_VERSION_MAJOR * 10000 + KVEVICT_VERSION_MINOR * 100 + KVEVICT_VERSION_PATCH)
