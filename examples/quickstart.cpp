// kvevict quick start: wrap an engine's KV memory, select with StreamingLLM, compact in place.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/kvevict.hpp>

#include <cstdio>
#include <vector>

int main() {
  // An engine's dense HND cache for one layer: 2 KV heads, room for 16 tokens, head_dim 4,
  // 12 tokens written. Key element (h, t, i) = 100·h + t + i/10, so every token is recognisable.
  constexpr int heads = 2, capacity = 16, tokens = 12, dim = 4, q_heads = 4, window = 2;
  std::vector<float> k(heads * capacity * dim), v(heads * capacity * dim),
      q(q_heads * window * dim);
  for (int h = 0; h < heads; ++h)
    for (int t = 0; t < tokens; ++t)
      for (int i = 0; i < dim; ++i) {
        k[(h * capacity + t) * dim + i] = 100.0f * h + t + i / 10.0f;
        v[(h * capacity + t) * dim + i] = -(100.0f * h + t + i / 10.0f);
      }

  using Storage = kvevict::Storage<float>;
  const kvevict::KVCache<float> kv(Storage::hnd(k.data(), capacity, dim),
                                   Storage::hnd(v.data(), capacity, dim),
                                   {.kv_heads = heads, .tokens = tokens, .head_dim = dim});
  const kvevict::QueryWindow<float> queries(q.data(), q_heads, window, dim);

  // Keep 4 attention sinks and the 2 most recent tokens: a budget of 6 tokens per head.
  const kvevict::StreamingLLM policy({.sinks = 4});
  kvevict::Selection keep;
  kvevict::Workspace ws;
  policy.select(kv, queries, kvevict::Budget::tokens(6), keep, ws);

  std::printf("StreamingLLM (4 sinks) with a budget of 6 of %d tokens keeps:", tokens);
  for (kvevict::token_t t : keep.kept(0)) std::printf(" %d", t);
  std::printf("\n");

  const kvevict::Compaction result = kvevict::compact(kv, keep);
  bool ok = true;
  for (int h = 0; h < heads; ++h) {
    std::printf("head %d after compaction (first key element, original position):", h);
    for (kvevict::index_t i = 0; i < result.lengths[h]; ++i) {
      const float first = kv.key(h, i)[0];
      const auto pos = result.kept_positions(h)[static_cast<std::size_t>(i)];
      std::printf(" (%.0f, %lld)", first, static_cast<long long>(pos));
      ok = ok && first == 100.0f * h + static_cast<float>(pos) && kv.value(h, i)[0] == -first;
    }
    std::printf("\n");
  }
  std::printf(ok ? "compaction moved every kept key and value to the front, bit for bit\n"
                 : "MISMATCH after compaction\n");
  return ok ? 0 : 1;
}
