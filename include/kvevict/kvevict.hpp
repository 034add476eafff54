// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Everything but `eval/`: views, the policy contract and pipeline, compaction, kernels,
/// policies and the registry.

// Views and the policy contract.
#include "any_policy.hpp"
#include "batch.hpp"
#include "budget.hpp"
#include "choose.hpp"
#include "compact.hpp"
#include "element.hpp"
#include "error.hpp"
#include "executor.hpp"
#include "kv_cache.hpp"
#include "layout.hpp"
#include "metadata.hpp"
#include "one_shot.hpp"
#include "output_projection.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "random.hpp"
#include "registry.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "slots.hpp"
#include "stream.hpp"
#include "streaming.hpp"
#include "version.hpp"
#include "workspace.hpp"

// Kernels.
#include "kernels/attention.hpp"
#include "kernels/head_budgets.hpp"
#include "kernels/pool.hpp"
#include "kernels/reduce.hpp"
#include "kernels/rope.hpp"
#include "kernels/softmax.hpp"
#include "kernels/topk.hpp"
#include "kernels/value_norm.hpp"

// Policies.
#include "policies/cascade.hpp"
#include "policies/corm.hpp"
#include "policies/criticalkv.hpp"
#include "policies/expected_attention.hpp"
#include "policies/h2o.hpp"
#include "policies/keydiff.hpp"
#include "policies/knorm.hpp"
#include "policies/lagkv.hpp"
#include "policies/nacl.hpp"
#include "policies/random_eviction.hpp"
#include "policies/snapkv.hpp"
#include "policies/streaming_llm.hpp"
#include "policies/tova.hpp"
