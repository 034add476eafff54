// rope_shift: a hand case per pairing convention, +a then −a round trips, and the shift that
// follows a compaction.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

TEST(RopeShift, HandCaseNeoxAndGptj) {
  // head_dim 4, base 1e4: θ0 = 1, θ1 = 1e4^(-1/2) = 0.01. Key [1, 0, 0, 1] shifted by +1.
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::gptj}) {
    std::vector<float> k{1, 0, 0, 1}, v(4);
    const KVCache<float> kv(Storage<float>::hnd(k.data(), 1, 4),
                            Storage<float>::hnd(v.data(), 1, 4), {1, 1, 4});
    rope_shift(kv, std::int64_t{1}, {.base = 10000.0, .style = style});
    const float c1 = static_cast<float>(std::cos(1.0)), s1 = static_cast<float>(std::sin(1.0));
    const float c2 = static_cast<float>(std::cos(0.01)), s2 = static_cast<float>(std::sin(0.01));
    // neox pairs (0,2) and (1,3); gptj pairs (0,1) and (2,3).
    const std::vector<float> want = style == RopeStyle::neox ? std::vector<float>{c1, -s2, s1, c2}
                                                             : std::vector<float>{c1, s1, -s2, c2};
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(k[static_cast<std::size_t>(i)], want[static_cast<std::size_t>(i)], 1e-7);
  }
}

TEST(RopeShift, PartialRotaryLeavesTheTailAlone) {
  std::vector<float> k{1, 2, 3, 4, 5, 6}, v(6);
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 1, 6), Storage<float>::hnd(v.data(), 1, 6),
                          {1, 1, 6});
  rope_shift(kv, std::int64_t{3}, {.rotary_dim = 4});
  EXPECT_EQ(k[4], 5.0f);
  EXPECT_EQ(k[5], 6.0f);
  EXPECT_NE(k[0], 1.0f);
}

template <class T>
class RopeRoundTrip : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(RopeRoundTrip, ElementTypes);

template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, Eigen::half>) return 4e-3;
  return 3e-2;  // bf16: 8 mantissa bits, rounded twice
}

// Shift by +a then −a returns every key within tolerance (relative L2 per key), on every layout,
// for both pairings and per-token deltas; values are never touched.
TYPED_TEST(RopeRoundTrip, PlusThenMinusReturnsTheKeys) {
  using T = TypeParam;
  for (Layout layout : all_layouts)
    for (RopeStyle style : {RopeStyle::neox, RopeStyle::gptj}) {
      SCOPED_TRACE(layout_name(layout));
      auto c = make_cache<T>(layout, 2, 9, 16, 16, 11);
      const auto before = snapshot(c.kv());
      std::vector<std::int64_t> plus(9), minus(9);
      for (int t = 0; t < 9; ++t) {
        plus[static_cast<std::size_t>(t)] = 1000 + 37 * t;
        minus[static_cast<std::size_t>(t)] = -plus[static_cast<std::size_t>(t)];
      }
      const Rope rope{.base = 500000.0, .style = style};
      rope_shift(c.kv(), std::span<const std::int64_t>(plus), rope);
      rope_shift(c.kv(), std::span<const std::int64_t>(minus), rope);
      const auto after = snapshot(c.kv());
      for (index_t h = 0; h < 2; ++h)
        for (index_t t = 0; t < 9; ++t) {
          const auto base = static_cast<std::size_t>((h * 9 + t) * 32);
          double err = 0, norm = 0;
          for (std::size_t i = 0; i < 16; ++i) {
            const T a = from_bits<T>(before[base + i]), b = from_bits<T>(after[base + i]);
            err += std::pow(static_cast<double>(to_float(a)) - to_float(b), 2);
            norm += std::pow(static_cast<double>(to_float(a)), 2);
          }
          EXPECT_LE(std::sqrt(err / norm), tolerance<T>()) << "head " << h << " token " << t;
          for (std::size_t i = 16; i < 32; ++i) ASSERT_EQ(before[base + i], after[base + i]);
        }
    }
}

// Shifting a key rotated at position p by δ equals rotating the raw key at p + δ.
TEST(RopeShift, ShiftComposesWithRotation) {
  const int d = 8;
  std::vector<float> raw(d);
  for (int i = 0; i < d; ++i)
    raw[static_cast<std::size_t>(i)] = 0.3f * static_cast<float>(i) - 1.0f;
  auto rotated_at = [&](std::int64_t p) {
    std::vector<float> k = raw, v(d);
    const KVCache<float> kv(Storage<float>::hnd(k.data(), 1, d),
                            Storage<float>::hnd(v.data(), 1, d), {1, 1, d});
    rope_shift(kv, p, {});  // from position 0 (raw) to p
    return k;
  };
  std::vector<float> k = rotated_at(17), v(d);
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 1, d), Storage<float>::hnd(v.data(), 1, d),
                          {1, 1, d});
  rope_shift(kv, std::int64_t{-12}, {});
  const auto want = rotated_at(5);
  for (int i = 0; i < d; ++i)
    EXPECT_NEAR(k[static_cast<std::size_t>(i)], want[static_cast<std::size_t>(i)], 1e-6);
}

// After compact, rope_shift(kv, compaction) moves token i of head h from its original position
// to position i: the same as shifting the original key by (i − position).
TEST(RopeShift, AfterCompactionToCacheRelativePositions) {
  auto c = make_cache<float>(Layout::paged_nhd, 2, 10, 8, 8, 3);
  const auto before = snapshot(c.kv());
  Selection sel;
  sel.reset(2, 10, false);
  auto a = sel.add_head(3);
  a[0] = 0;
  a[1] = 4;
  a[2] = 9;
  auto b = sel.add_head(2);
  b[0] = 2;
  b[1] = 7;
  const Compaction comp = compact(c.kv(), sel);
  rope_shift(c.kv(), comp, {});
  for (index_t h = 0; h < 2; ++h)
    for (std::size_t i = 0; i < sel.kept(h).size(); ++i) {
      const index_t from = sel.kept(h)[i];
      std::vector<float> k(8), v(8);
      for (std::size_t e = 0; e < 8; ++e)
        k[e] = from_bits<float>(before[static_cast<std::size_t>((h * 10 + from) * 16) + e]);
      const KVCache<float> one(Storage<float>::hnd(k.data(), 1, 8),
                               Storage<float>::hnd(v.data(), 1, 8), {1, 1, 8});
      rope_shift(one, static_cast<std::int64_t>(i) - from, {});
      for (std::size_t e = 0; e < 8; ++e)
        EXPECT_FLOAT_EQ(c.kv().key(h, static_cast<index_t>(i))[e], k[e]);
    }
}

TEST(RopeShift, ValidatesParameters) {
  auto c = make_cache<float>(Layout::hnd, 1, 2, 6, 6, 1);
  expect_error([&] { rope_shift(c.kv(), std::int64_t{1}, {.rotary_dim = 3}); },
               "rope.rotary_dim: expected an even count in [2, head_dim = 6] (or 0), got 3");
  expect_error([&] { rope_shift(c.kv(), std::int64_t{1}, {.rotary_dim = 8}); },
               "rope.rotary_dim: expected an even count in [2, head_dim = 6] (or 0), got 8");
  expect_error([&] { rope_shift(c.kv(), std::int64_t{1}, {.base = 0.5}); },
               "rope.base: expected a finite base > 1, got 0.5");
  const std::vector<std::int64_t> too_many(3, 1);
  expect_error([&] { rope_shift(c.kv(), std::span<const std::int64_t>(too_many), {}); },
               "deltas: expected at most one delta per token (2), got 3");
}

}  // namespace
}  // namespace kvevict::test
