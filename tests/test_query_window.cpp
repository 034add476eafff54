// QueryWindow's layouts (issue 33.2): the same queries laid out per head ([q_heads][window][d])
// or per position ([window][q_heads][d], vLLM / FlashInfer) are the same window.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/kvevict.hpp>

#include "support.hpp"

namespace kvevict::test {
namespace {

TEST(QueryWindow, NamedLayoutsAddressTheSameQueries) {
  constexpr index_t heads = 4, w = 3, d = 5;
  std::vector<float> per_head(heads * w * d), per_position(heads * w * d);
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < w; ++i)
      for (index_t k = 0; k < d; ++k) {
        const float x = static_cast<float>(100 * h + 10 * i + k);
        per_head[static_cast<std::size_t>((h * w + i) * d + k)] = x;
        per_position[static_cast<std::size_t>((i * heads + h) * d + k)] = x;
      }
  const QueryShape shape{.q_heads = heads, .window = w, .head_dim = d};
  const auto a = QueryWindow<float>::hnd(std::span<const float>(per_head), shape);
  const auto b = QueryWindow<float>::nhd(std::span<const float>(per_position), shape);
  const auto c =
      QueryWindow<float>::strided(per_position.data(), shape, {.head = d, .position = heads * d});
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < w; ++i) {
      EXPECT_EQ(a.query(h, i)[2], static_cast<float>(100 * h + 10 * i + 2));
      EXPECT_TRUE(std::ranges::equal(a.query(h, i), b.query(h, i)));
      EXPECT_TRUE(std::ranges::equal(b.query(h, i), c.query(h, i)));
    }
  // The same selection from either layout.
  auto cache = make_cache<float>(Layout::nhd, 2, 40, d, d, 7);
  std::vector<float> q(static_cast<std::size_t>(heads * 8 * d));
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  for (float& x : q) x = normal(rng);
  std::vector<float> q_nhd(q.size());
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < 8; ++i)
      std::copy_n(q.data() + (h * 8 + i) * d, d, q_nhd.data() + (i * heads + h) * d);
  const QueryShape s8{.q_heads = heads, .window = 8, .head_dim = d};
  Selection x, y;
  Workspace ws;
  const SnapKV snap({.window = 8});
  snap.select(cache.kv(), QueryWindow<float>::hnd(q.data(), s8), Budget::tokens(16), x, ws);
  snap.select(cache.kv(), QueryWindow<float>::nhd(q_nhd.data(), s8), Budget::tokens(16), y, ws);
  for (index_t h = 0; h < 2; ++h) EXPECT_TRUE(std::ranges::equal(x.kept(h), y.kept(h)));
}

TEST(QueryWindow, SpansAreCheckedAgainstTheLayout) {
  std::vector<float> q(4 * 3 * 5);
  const QueryShape shape{.q_heads = 4, .window = 3, .head_dim = 5};
  EXPECT_NO_THROW(QueryWindow<float>::nhd(std::span<const float>(q), shape));
  expect_error(
      [&] { QueryWindow<float>::nhd(std::span<const float>(q).first(59), shape); },
      "queries: expected a buffer holding every query (60 elements at the strides), got a span "
      "of 59");
  expect_error(
      [&] {
        QueryWindow<float>::strided(std::span<const float>(q), shape, {.head = 5, .position = 21});
      },
      "queries: expected a buffer holding every query (62 elements at the strides), got a span "
      "of 60");
  expect_error(
      [&] { QueryWindow<float>::hnd(q.data(), {.q_heads = 4, .window = 0, .head_dim = 5}); },
      "queries.window: expected at least 1 query, got 0");
}

}  // namespace
}  // namespace kvevict::test
