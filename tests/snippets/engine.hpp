// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief What the documentation's snippets take from "the engine": its buffers, its sizes and
/// the calls it makes around kvevict. Declared here so that every snippet compiles as written
/// (tests/snippets/extract.py); nothing here runs.

#include <kvevict/kvevict.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

namespace kvevict_snippets {

using kvevict::index_t;
using half = Eigen::half;

// Sizes of "the model" and "the sequence".
inline index_t capacity = 4096, n = 3000, n_layers = 32, q_heads = 32, kv_heads = 8,
               pool_pages = 1024, pool_blocks = 1024;

// One layer's dense cache and the last queries, as buffers (spans) and as raw pointers.
inline std::span<half> k_buffer, v_buffer;
inline std::span<const half> q_buffer;
inline half *k_ptr = nullptr, *v_ptr = nullptr;
inline const half* q_ptr = nullptr;
inline float *k = nullptr, *v = nullptr;  // an fp32 cache [8][4096][128]
inline const float* q_data = nullptr;     // fp32 queries [32 positions][32 heads][128]

// A paged pool (vLLM's (blocks, block_size, kv_heads, head_dim)) and this sequence's pages.
inline half *k_pool = nullptr, *v_pool = nullptr;
inline std::span<const std::int32_t> block_table;
inline const half* q_tokens = nullptr;  // queries [tokens][heads][head_dim]

// Quantized pools (llama.cpp q8_0 cells; int8 with per-(token, head) fp16 scales).
inline kvevict::q8_0 *k_blocks = nullptr, *v_blocks = nullptr;
inline kvevict::Storage<kvevict::int8> K8 = kvevict::Storage<kvevict::int8>::nhd(nullptr, 8, 128),
                                       V8 = K8;
inline Eigen::half *k_scales = nullptr, *v_scales = nullptr;
inline kvevict::Shape shape{.kv_heads = 8, .tokens = 3000, .head_dim = 128};
inline kvevict::Storage<half> K = kvevict::Storage<half>::paged_nhd(nullptr, 16, 8, 128), V = K;

// The kvevict objects an engine has made before a snippet starts.
inline kvevict::KVCache<half> kv(kvevict::Storage<half>::hnd(nullptr, 1, 128),
                                 kvevict::Storage<half>::hnd(nullptr, 1, 128),
                                 {.kv_heads = 8, .tokens = 0, .head_dim = 128});
inline kvevict::QueryWindow<half> queries(nullptr, 32, 0, 128);
inline kvevict::QueryWindow<float> fp32_queries(nullptr, 32, 0, 128);
inline kvevict::QueryWindow<half> query(nullptr, 32, 1, 128), recent_queries = query;
inline kvevict::KVCache<half> slots(kvevict::Storage<half>::hnd(nullptr, 1, 128),
                                    kvevict::Storage<half>::hnd(nullptr, 1, 128),
                                    {.kv_heads = 8, .tokens = 0, .head_dim = 128});
inline kvevict::SnapKV policy;
inline kvevict::Budget budget = kvevict::Budget::ratio(0.2);
inline kvevict::Selection keep, sel;
inline kvevict::Workspace ws;
inline std::vector<kvevict::KVCache<half>> layer_caches;
inline std::vector<kvevict::QueryWindow<half>> layer_queries;
inline std::vector<float> probabilities;
inline std::span<const half> new_keys, new_values;  // the new token's K/V [kv_heads][head_dim]
inline std::span<const float> p;                     // scores an engine computed

// The engine's own calls around kvevict.
bool generating();
void write_kv(std::span<const kvevict::token_t> slot_per_head);
void attend(index_t slots, std::vector<float>& probabilities_out);
void attend(const kvevict::KVCache<half>& cache, const kvevict::QueryWindow<half>& q);
void forget(index_t head, kvevict::token_t slot);
kvevict::KVCache<half> engine_view(int layer);
kvevict::QueryWindow<half> engine_queries(int layer);

// A pool of the engine's threads: runs task(i, thread) for i in [0, tasks), returns when done.
struct MyPool {
  int size() const;
  void run(std::int64_t tasks, const std::function<void(std::int64_t, int)>& task);
};
inline MyPool my_pool;

/// An engine's own policy, registered by name (the registry's and AnyPolicy's examples): keeps
/// the tokens with the largest `alpha`-weighted key sum.
struct MyScorerParams {
  double alpha = 1.0;
};
class MyScorer : public kvevict::OneShot<MyScorer, MyScorerParams> {
 public:
  using OneShot::OneShot;
  static constexpr std::string_view name = "my_scorer";
  static constexpr kvevict::PolicyInfo info{.summary = "an engine's own scorer",
                                            .reads = kvevict::reads_keys};
  static std::vector<kvevict::Parameter<Params>> parameters() {
    return {kvevict::param<&Params::alpha>("alpha", "", "weight of the key sum")};
  }
  kvevict::TopK rule(index_t) const { return {}; }
  template <kvevict::Element T>
  kvevict::Scores score(const kvevict::KVCache<T>& cache,
                        const kvevict::QueryWindow<kvevict::query_type<T>>&, kvevict::Granularity,
                        kvevict::Workspace& w) const {
    auto out = w.take<float>(cache.kv_heads() * cache.tokens());
    auto row = w.take<float>(cache.head_dim());
    for (index_t h = 0; h < cache.kv_heads(); ++h)
      for (index_t t = 0; t < cache.tokens(); ++t) {
        cache.read(kvevict::Tensor::keys, h, t, row.data());
        float sum = 0;
        for (float x : row) sum += x;
        out[static_cast<std::size_t>(h * cache.tokens() + t)] =
            static_cast<float>(params().alpha) * sum;
      }
    return kvevict::Scores::of_kv_heads(out, cache);
  }
};

}  // namespace kvevict_snippets
