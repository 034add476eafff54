// KVCache<T>: every layout shows the same logical tensor; construction validates.
// SPDX-License-Identifier: Apache-2.0
#include "support.hpp"

namespace kvevict::test {
namespace {

template <class T>
class KVCacheLayouts : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(KVCacheLayouts, ElementTypes);

// Every layout filled from the same seed exposes the same (head, token) spans.
TYPED_TEST(KVCacheLayouts, EveryLayoutShowsTheSameTensor) {
  using T = TypeParam;
  auto reference = make_cache<T>(Layout::hnd, 3, 13, 8, 8, 42);
  const auto want = snapshot(reference.kv());
  for (Layout layout : all_layouts) {
    SCOPED_TRACE(layout_name(layout));
    auto c = make_cache<T>(layout, 3, 13, 8, 8, 42);
    EXPECT_EQ(snapshot(c.kv()), want);
  }
}

// for_each_run covers [begin, end) in order with evenly strided runs that match key(h, t).
TYPED_TEST(KVCacheLayouts, RunsCoverTheRangeInOrder) {
  using T = TypeParam;
  for (Layout layout : all_layouts) {
    SCOPED_TRACE(layout_name(layout));
    auto c = make_cache<T>(layout, 2, 11, 4, 4, 7);
    const KVCache<T>& kv = c.kv();
    for (Tensor which : {Tensor::keys, Tensor::values})
      for (index_t h = 0; h < 2; ++h) {
        index_t next = 3;
        kv.for_each_run(which, h, 3, 10, [&](const TokenRun<T>& run) {
          EXPECT_EQ(run.first, next);
          for (index_t i = 0; i < run.count; ++i)
            EXPECT_EQ(run.data + i * run.stride, kv.span(which, h, run.first + i).data());
          next += run.count;
        });
        EXPECT_EQ(next, 10);
      }
  }
}

TEST(KVCache, DenseRunIsOneRunPagedIsOnePerPage) {
  auto dense = make_cache<float>(Layout::hnd, 1, 10, 4, 4, 1);
  int runs = 0;
  dense.kv().for_each_run(Tensor::keys, 0, 0, 10, [&](const TokenRun<float>&) { ++runs; });
  EXPECT_EQ(runs, 1);
  auto paged = make_cache<float>(Layout::paged_nhd, 1, 10, 4, 4, 1, /*page=*/4);
  runs = 0;
  paged.kv().for_each_run(Tensor::keys, 0, 1, 10, [&](const TokenRun<float>& r) {
    ++runs;
    EXPECT_LE(r.count, 4);
  });
  EXPECT_EQ(runs, 3);  // [1,4) [4,8) [8,10)
}

TEST(KVCache, DifferentValueHeadDim) {
  for (Layout layout : {Layout::hnd, Layout::nhd, Layout::padded, Layout::paged_hnd,
                        Layout::paged_nhd, Layout::cells}) {
    SCOPED_TRACE(layout_name(layout));
    auto c = make_cache<float>(layout, 2, 9, 8, 5, 3);
    EXPECT_EQ(c.kv().key(1, 8).size(), 8u);
    EXPECT_EQ(c.kv().value(1, 8).size(), 5u);
  }
}

TEST(KVCache, PositionsLayerAndTokens) {
  auto c = make_cache<float>(Layout::hnd, 1, 4, 2, 2, 1);
  EXPECT_EQ(c.kv().position(3), 3);
  const std::vector<std::int64_t> pos{0, 5, 6, 9};
  const auto kv = c.kv().with_positions(pos).with_layer(7);
  EXPECT_EQ(kv.position(1), 5);
  EXPECT_EQ(kv.layer(), 7);
  const auto shorter = kv.with_tokens(2);
  EXPECT_EQ(shorter.tokens(), 2);
  EXPECT_EQ(shorter.positions().size(), 2u);
  // The HND buffer has room for 9 tokens, but only 4 positions were given.
  expect_error([&] { (void)kv.with_tokens(5); },
               "tokens: expected at most the number of positions (4), got 5");
}

// ---- validation: each error names its argument and the expected value --------------------------

TEST(KVCacheErrors, Shape) {
  std::vector<float> k(64), v(64);
  using S = Storage<float>;
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::hnd(v.data(), 8, 4), {0, 8, 4});
      },
      "kv_heads: expected at least 1 KV head, got 0");
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::hnd(v.data(), 8, 4), {2, 0, 4});
      },
      "tokens: expected 1 <= tokens < 2^31, got 0");
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::hnd(v.data(), 8, 4), {2, 8, 0});
      },
      "head_dim: expected head_dim >= 1, got 0");
  expect_error(
      [&] {
        KVCache<float>(S::hnd(nullptr, 8, 4), S::hnd(v.data(), 8, 4), {2, 8, 4});
      },
      "keys.data: expected a non-null pointer, got nullptr");
}

TEST(KVCacheErrors, OverlappingStrides) {
  std::vector<float> k(256), v(256);
  using S = Storage<float>;
  // HND with capacity 8 cannot hold 9 tokens: head 1 would start inside head 0. The Storage
  // says so (its capacity), and with the same strides given directly the overlap does.
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::hnd(v.data(), 8, 4), {2, 9, 4});
      },
      "tokens: expected at most the capacity the keys' Storage was made with (8), got 9");
  expect_error(
      [&] {
        KVCache<float>(S::strided(k.data(), {.head = 32, .token = 4}), S::hnd(v.data(), 9, 4),
                       {2, 9, 4});
      },
      "keys: expected head_stride and token_stride under which no two (head, token) spans of 4 "
      "elements overlap, got head_stride=32, token_stride=4");
  // Token stride shorter than head_dim.
  expect_error(
      [&] {
        KVCache<float>(S::strided(k.data(), {.head = 64, .token = 3}), S::hnd(v.data(), 8, 4),
                       {2, 8, 4});
      },
      "keys: expected head_stride and token_stride under which no two (head, token) spans of 4 "
      "elements overlap, got head_stride=64, token_stride=3");
  // Negative strides are not supported.
  expect_error(
      [&] {
        KVCache<float>(S::strided(k.data(), {.head = -32, .token = 4}), S::hnd(v.data(), 8, 4),
                       {2, 8, 4});
      },
      "keys: expected head_stride and token_stride under which no two (head, token) spans of 4 "
      "elements overlap, got head_stride=-32, token_stride=4");
  // Values overlapping keys.
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::hnd(k.data() + 16, 8, 4), {2, 8, 4});
      },
      "values.data: expected memory disjoint from the keys, got an overlap with the keys");
  expect_error(
      [&] {
        KVCache<float>(S::hnd(k.data(), 8, 4), S::nhd(k.data() + 60, 2, 4), {2, 8, 4});
      },
      "values.data: expected memory disjoint from the keys, got an overlap with the keys");
  // A legal interleaving: K and V of one token side by side, [t][{k,v}][h][d].
  EXPECT_NO_THROW(KVCache<float>(S::strided(k.data(), {.head = 4, .token = 16}),
                                 S::strided(k.data() + 8, {.head = 4, .token = 16}), {2, 8, 4}));
  // A single head or single token ignores the stride of that dimension.
  EXPECT_NO_THROW(KVCache<float>(S::strided(k.data(), {.head = 0, .token = 4}),
                                 S::strided(v.data(), {.head = 0, .token = 4}), {1, 8, 4}));
}

TEST(KVCacheErrors, PageTable) {
  std::vector<float> k(4 * 2 * 4 * 4), v(4 * 2 * 4 * 4);
  using S = Storage<float>;
  const auto ks = S::paged_hnd(k.data(), 4, 2, 4), vs = S::paged_hnd(v.data(), 4, 2, 4);
  const std::vector<std::int32_t> ok{2, 0, 3}, out_of_range{2, 4, 1}, dup{1, 3, 1}, neg{0, -1};
  EXPECT_NO_THROW(KVCache<float>(ks, vs, {2, 10, 4}, {ok, 4, 4}));
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 10, 4}, {out_of_range, 4, 4});
      },
      "pages.pages[1]: expected a page id in [0, pool_pages = 4), got 4");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 8, 4}, {neg, 4, 4});
      },
      "pages.pages[1]: expected a page id in [0, pool_pages = 4), got -1");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 10, 4}, {dup, 4, 4});
      },
      "pages.pages: expected distinct page ids (two tokens would share memory), got page "
      "1 listed twice");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 13, 4}, {ok, 4, 4});
      },
      "pages.pages: expected at least ceil(tokens / page_size) = 4 page ids, got 3");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 10, 4}, {ok, 0, 4});
      },
      "pages.page_size: expected page_size >= 1, got 0");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 10, 4}, {ok, 4, 0});
      },
      "pages.pool_pages: expected 1 <= pool_pages < 2^31, got 0");
  expect_error(
      [&] {
        KVCache<float>(ks, vs, {2, 10, 4}, {ok, 4, 4, 4});
      },
      "pages.read_only_pages: expected 0 <= read_only_pages <= 3, got 4");
  // Page stride too small for a page of 2 heads × 4 tokens × 4.
  expect_error(
      [&] {
        KVCache<float>(S::paged(k.data(), {.head = 16, .token = 4, .page = 16}), vs, {2, 10, 4},
                       {ok, 4, 4});
      },
      "keys: expected head_stride, token_stride and page_stride under which no two (page, head, "
      "token) spans of 4 elements overlap, got head_stride=16, token_stride=4, page_stride=16");
}

TEST(KVCacheErrors, Positions) {
  auto c = make_cache<float>(Layout::hnd, 1, 4, 2, 2, 1);
  const std::vector<std::int64_t> short_pos{0, 1}, repeat{0, 3, 3, 4}, negative{-1, 0, 1, 2};
  expect_error([&] { (void)c.kv().with_positions(short_pos); },
               "positions: expected one position per token (4), got 2");
  expect_error([&] { (void)c.kv().with_positions(repeat); },
               "positions: expected strictly increasing values, got positions[2]=3 after "
               "positions[1]=3");
  expect_error([&] { (void)c.kv().with_positions(negative); },
               "positions: expected values >= 0, got positions[0]=-1");
  expect_error([&] { (void)c.kv().with_layer(-2); }, "layer: expected a layer index >= 0, got -2");
}

TEST(QueryWindow, ValidatesAndChecksAgainstTheCache) {
  std::vector<float> q(4 * 3 * 8);
  const QueryWindow<float> window(q.data(), 4, 3, 8);
  EXPECT_EQ(window.query(2, 1).data(), q.data() + 2 * 24 + 8);
  auto c = make_cache<float>(Layout::hnd, 2, 5, 8, 8, 1);
  EXPECT_EQ(check_window(c.kv(), window), 2);
  auto c3 = make_cache<float>(Layout::hnd, 3, 5, 8, 8, 1);
  expect_error([&] { check_window(c3.kv(), window); },
               "queries.q_heads: expected a multiple of kv_heads (3), got 4");
  auto c_small = make_cache<float>(Layout::hnd, 2, 2, 8, 8, 1);
  expect_error([&] { check_window(c_small.kv(), window); },
               "queries.window: expected at most the cache's tokens (2), got 3");
  auto c_dim = make_cache<float>(Layout::hnd, 2, 5, 4, 4, 1);
  expect_error([&] { check_window(c_dim.kv(), window); },
               "queries.head_dim: expected the keys' head_dim (4), got 8");
  expect_error([&] { QueryWindow<float>(q.data(), 0, 3, 8); },
               "queries.q_heads: expected at least 1 query head, got 0");
  expect_error([&] { QueryWindow<float>(q.data(), 4, 3, 8, 8, 8); },
               "queries: expected head_stride and position_stride under which no two query "
               "vectors of 8 elements overlap, got head_stride=8, position_stride=8");
}

}  // namespace
}  // namespace kvevict::test
