// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Everything but `eval/`: views, the policy contract, compaction, kernels and policies.

#include "budget.hpp"
#include "compact.hpp"
#include "element.hpp"
#include "error.hpp"
#include "kernels/rope.hpp"
#include "kernels/softmax.hpp"
#include "kv_cache.hpp"
#include "layout.hpp"
#include "policies/streaming_llm.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "selection.hpp"
#include "slots.hpp"
#include "streaming.hpp"
#include "workspace.hpp"
