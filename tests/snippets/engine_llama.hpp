// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief What the llama.cpp snippets take from the engine (see engine.hpp): a loaded model and
/// a prompt. Compiled by the llama build, which has llama.h.

#include <kvevict/llama.hpp>

#include <string>

#include "engine.hpp"

namespace kvevict_snippets {

inline llama_model* model = nullptr;
inline std::string prompt;

}  // namespace kvevict_snippets
