// A decode loop with H2O over a vLLM-style paged KV cache: the engine's memory stays bounded by
// the budget, and no token is copied when another is evicted — its slot is simply reused.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/kvevict.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

int main() {
  constexpr kvevict::index_t kv_heads = 2, q_heads = 4, dim = 16, page_size = 4, budget = 12;
  constexpr std::int64_t steps = 200;

  // The policy holds the parameters; `start` returns the sequence's stream, which decides how
  // many slots the sequence needs: budget + 1 (the newest token joins before one leaves).
  const kvevict::H2O policy({.recent = 4});
  auto h2o = policy.start({.kv_heads = kv_heads, .q_heads = q_heads, .budget = budget});

  // The engine's page pool, shared by all sequences: [pages][page_size][kv_heads][dim] (NHD),
  // and this sequence's block table (pages need not be contiguous or in order).
  const kvevict::index_t pool_pages = 16;
  std::vector<float> k_pool(pool_pages * page_size * kv_heads * dim),
      v_pool(pool_pages * page_size * kv_heads * dim);
  const kvevict::index_t pages = (h2o.slots() + page_size - 1) / page_size;
  std::vector<std::int32_t> block_table;
  for (kvevict::index_t i = 0; i < pages; ++i)
    block_table.push_back(static_cast<std::int32_t>(3 * i + 1));  // pages 1, 4, 7, 10

  using S = kvevict::Storage<float>;
  const kvevict::KVCache<float> slots(
      S::paged_nhd(k_pool.data(), page_size, kv_heads, dim),
      S::paged_nhd(v_pool.data(), page_size, kv_heads, dim),
      {.kv_heads = kv_heads, .tokens = h2o.slots(), .head_dim = dim},
      {.pages = block_table, .page_size = page_size, .pool_pages = pool_pages});
  kvevict::StreamDriver driver(h2o, slots);
  kvevict::Workspace ws;

  // A toy model: every 50th token is "important" (its key aligns with the queries), the rest is
  // noise. H2O keeps tokens by attention accumulated over every step they were cached, so it
  // keeps the early important token (10) and the first tokens (they collected attention while
  // the cache was small) — and lets the later important ones lose to them, a known trait of
  // accumulated scores that `kvevict eval` shows against the other policies.
  kvevict::RandomStream rng(1, 0, 0);
  auto noise = [&] { return static_cast<float>(rng.uniform() - 0.5); };
  std::vector<float> k(kv_heads * dim), v(kv_heads * dim), q(q_heads * dim);
  std::int64_t evicted = 0;
  for (std::int64_t pos = 0; pos < steps; ++pos) {
    const bool important = pos % 50 == 10;
    for (kvevict::index_t i = 0; i < kv_heads * dim; ++i) {
      k[i] = noise() + (important && i % dim == 0 ? 4.0f : 0.0f);
      v[i] = noise();
    }
    for (kvevict::index_t i = 0; i < q_heads * dim; ++i)
      q[i] = (i % dim == 0 ? 2.0f : 0.0f) + noise();

    driver.append(pos, k, v);  // writes K/V into the slot H2O assigns (a freed one once full)
    const kvevict::Evictions out =
        driver.observe(kvevict::QueryWindow<float>(q.data(), q_heads, 1, dim), ws);
    evicted += static_cast<std::int64_t>(out.of(0).size());
  }

  std::printf(
      "H2O over a paged cache: %lld tokens decoded, %lld evicted per head, %lld slots in "
      "%lld pages of %lld\n",
      static_cast<long long>(steps), static_cast<long long>(evicted),
      static_cast<long long>(h2o.slots()), static_cast<long long>(pages),
      static_cast<long long>(page_size));
  bool ok = true;
  for (kvevict::index_t h = 0; h < kv_heads; ++h) {
    std::vector<std::int64_t> live;
    for (kvevict::index_t s = 0; s < h2o.slots(); ++s)
      if (driver.live(h, s)) live.push_back(h2o.position(h, s));
    std::sort(live.begin(), live.end());
    std::printf("head %lld keeps positions:", static_cast<long long>(h));
    for (std::int64_t p : live) std::printf(" %lld", static_cast<long long>(p));
    std::printf("\n");
    ok = ok && static_cast<kvevict::index_t>(live.size()) == budget &&
         std::binary_search(live.begin(), live.end(), 10);
    for (std::int64_t p = steps - 4; p < steps; ++p)  // the recent window
      ok = ok && std::binary_search(live.begin(), live.end(), p);
  }
  std::printf(ok ? "each head holds exactly the budget: the recent 4 and the important token 10 "
                   "among its heavy hitters\n"
                 : "UNEXPECTED cache contents\n");
  return ok ? 0 : 1;
}
