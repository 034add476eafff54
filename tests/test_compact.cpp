// compact(): bit-exact against a naive copy for random selections, on every layout and dtype.
// SPDX-License-Identifier: Apache-2.0
#include "support.hpp"

namespace kvevict::test {
namespace {

/// A random selection: per head (or shared), each token kept with probability `keep`.
inline Selection random_selection(index_t heads, index_t tokens, bool shared, double keep,
                                  std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution coin(keep);
  Selection sel;
  sel.reset(heads, tokens, shared);
  std::vector<token_t> kept;
  for (index_t h = 0; h < sel.stored_heads(); ++h) {
    kept.clear();
    for (index_t t = 0; t < tokens; ++t)
      if (coin(rng)) kept.push_back(static_cast<token_t>(t));
    auto out = sel.add_head(static_cast<index_t>(kept.size()));
    std::copy(kept.begin(), kept.end(), out.begin());
  }
  return sel;
}

template <class T>
class Compact : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(Compact, ElementTypes);

// After compact, token i of head h holds what kept(h)[i] held, bit for bit; every other element
// of the memory (evicted tails, padding, spare pages) is untouched.
TYPED_TEST(Compact, BitExactOnEveryLayout) {
  using T = TypeParam;
  for (Layout layout : all_layouts)
    for (bool shared : {false, true})
      for (double keep : {0.0, 0.3, 0.5, 0.9, 1.0})
        for (std::uint64_t seed : {1u, 2u, 3u}) {
          SCOPED_TRACE(::testing::Message() << layout_name(layout) << " shared=" << shared
                                            << " keep=" << keep << " seed=" << seed);
          auto c = make_cache<T>(layout, 3, 23, 8, 8, seed, /*page=*/4);
          KVCache<T>& kv = c.kv();
          const auto before = snapshot(kv);
          const auto kmem = c.kmem, vmem = c.vmem;
          const Selection sel = random_selection(3, 23, shared, keep, seed * 7 + 1);

          const Compaction result = compact(kv, sel);

          // Expected: the naive copy.
          const index_t row = 2 * 8;  // K then V per (h, t) in the snapshot
          std::vector<bool> kwritten(c.kmem.size()), vwritten(c.vmem.size());
          for (index_t h = 0; h < 3; ++h) {
            ASSERT_EQ(result.lengths[static_cast<std::size_t>(h)], sel.size(h));
            const auto kept = sel.kept(h);
            for (std::size_t i = 0; i < kept.size(); ++i) {
              const auto src = static_cast<std::size_t>((h * 23 + kept[i]) * row);
              const auto key = kv.key(h, static_cast<index_t>(i));
              const auto value = kv.value(h, static_cast<index_t>(i));
              for (std::size_t e = 0; e < 8; ++e) {
                ASSERT_EQ(bits(key[e]), before[src + e]) << "head " << h << " token " << i;
                ASSERT_EQ(bits(value[e]), before[src + 8 + e]) << "head " << h << " token " << i;
              }
              EXPECT_EQ(result.kept_positions(h)[i], kept[i]);
              for (std::size_t e = 0; e < 8; ++e) {
                kwritten[static_cast<std::size_t>(&key[e] - c.kmem.data())] = true;
                if (layout == Layout::vllm_blocks)
                  kwritten[static_cast<std::size_t>(&value[e] - c.kmem.data())] = true;
                else
                  vwritten[static_cast<std::size_t>(&value[e] - c.vmem.data())] = true;
              }
            }
          }
          for (std::size_t i = 0; i < kmem.size(); ++i) {
            if (!kwritten[i]) {
              ASSERT_EQ(bits(c.kmem[i]), bits(kmem[i])) << "key memory " << i;
            }
          }
          for (std::size_t i = 0; i < vmem.size(); ++i) {
            if (!vwritten[i]) {
              ASSERT_EQ(bits(c.vmem[i]), bits(vmem[i])) << "value memory " << i;
            }
          }
        }
}

// The forward copy with streaming stores equals memmove for every alignment of the destination,
// length and overlap (dst < src), including ranges shorter than a line.
TEST(Compact, StreamingForwardCopyEqualsMemmove) {
  std::vector<std::uint8_t> init(2048);
  for (std::size_t i = 0; i < init.size(); ++i) init[i] = static_cast<std::uint8_t>(i * 131 + 7);
  for (std::size_t dst : {0u, 1u, 16u, 48u, 63u, 64u, 100u})
    for (std::size_t gap : {1u, 3u, 16u, 64u, 65u, 200u, 512u})
      for (std::size_t bytes : {0u, 1u, 15u, 63u, 64u, 65u, 127u, 200u, 512u, 700u})
        for (bool stream : {false, true}) {
          // a 64-byte aligned block, so that `dst` is the offset from a line
          alignas(64) std::uint8_t got[2048];
          std::memcpy(got, init.data(), init.size());
          std::vector<std::uint8_t> want = init;
          std::memmove(want.data() + dst, want.data() + dst + gap, bytes);
          detail::copy_forward(reinterpret_cast<std::byte*>(got + dst),
                               reinterpret_cast<const std::byte*>(got + dst + gap), bytes, stream);
          detail::streaming_fence();
          ASSERT_EQ(0, std::memcmp(got, want.data(), want.size()))
              << "dst " << dst << " gap " << gap << " bytes " << bytes << " stream " << stream;
        }
}

// A compaction with streaming stores (forced: threshold 0), over memory that does not start a
// cache line: bit-exact, identical to ordinary stores, and nothing past each head's new length
// is written. The default threshold is the machine's last-level cache.
TEST(Compact, StreamingStoresAreBitExactAndTheThresholdIsAnOption) {
  EXPECT_GE(detail::last_level_cache_bytes(), std::size_t{1} << 20);
  const index_t heads = 2, n = 2048, d = 96;
  const auto per_tensor = static_cast<std::size_t>(heads * n * d);
  std::vector<float> k0(per_tensor + 3), v0(per_tensor + 3);
  for (std::size_t i = 0; i < k0.size(); ++i) {
    k0[i] = static_cast<float>(i);
    v0[i] = -static_cast<float>(i);
  }
  const Selection sel = random_selection(heads, n, /*shared=*/false, 0.6, 11);
  std::vector<float> streamed_k;
  for (const std::size_t threshold : {std::size_t{0}, SIZE_MAX}) {
    std::vector<float> kmem = k0, vmem = v0;
    const KVCache<float> kv(Storage<float>::hnd(kmem.data() + 3, n, d),
                            Storage<float>::hnd(vmem.data() + 3, n, d),
                            {.kv_heads = heads, .tokens = n, .head_dim = d});
    Compaction out;
    compact(kv, sel, out, CompactOptions{.streaming_store_bytes = threshold});
    for (index_t h = 0; h < heads; ++h) {
      const auto kept = sel.kept(h);
      const auto base = static_cast<std::size_t>(3 + h * n * d);
      for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
        // kept rows moved to the front; the rest of the head as it was
        const std::size_t from = i < kept.size() ? static_cast<std::size_t>(kept[i]) : i;
        for (std::size_t e = 0; e < static_cast<std::size_t>(d); e += 7) {
          ASSERT_EQ(bits(kmem[base + i * d + e]), bits(k0[base + from * d + e])) << h << " " << i;
          ASSERT_EQ(bits(vmem[base + i * d + e]), bits(v0[base + from * d + e])) << h << " " << i;
        }
      }
    }
    EXPECT_EQ(bits(kmem[0]), bits(k0[0]));  // before the view
    if (threshold == 0)
      streamed_k = kmem;
    else
      EXPECT_EQ(streamed_k, kmem);  // the same bytes either way
  }
}

TEST(Compact, KeepAllIsANoOpBitForBit) {
  for (Layout layout : all_layouts) {
    auto c = make_cache<Eigen::half>(layout, 2, 17, 8, 8, 5);
    const auto kmem = c.kmem, vmem = c.vmem;
    const Compaction result = compact(c.kv(), Selection::all(2, 17, false));
    EXPECT_EQ(result.lengths, (std::vector<index_t>{17, 17}));
    for (std::size_t i = 0; i < kmem.size(); ++i) ASSERT_EQ(bits(c.kmem[i]), bits(kmem[i]));
    for (std::size_t i = 0; i < vmem.size(); ++i) ASSERT_EQ(bits(c.vmem[i]), bits(vmem[i]));
  }
}

TEST(Compact, ReturnsOriginalPositionsThroughTheView) {
  auto c = make_cache<float>(Layout::hnd, 1, 5, 2, 2, 1);
  const std::vector<std::int64_t> pos{3, 8, 9, 20, 21};
  const auto kv = c.kv().with_positions(pos);
  Selection sel;
  sel.reset(1, 5, true);
  auto k = sel.add_head(3);
  k[0] = 0;
  k[1] = 2;
  k[2] = 4;
  const Compaction r = compact(kv, sel);
  const auto kept = r.kept_positions(0);
  EXPECT_EQ(std::vector<std::int64_t>(kept.begin(), kept.end()),
            (std::vector<std::int64_t>{3, 9, 21}));
}

TEST(Compact, ReadOnlyPrefixPagesAreNeverWritten) {
  std::vector<float> k(6 * 4 * 2), v(6 * 4 * 2);
  const std::vector<std::int32_t> pages{4, 1, 5};
  const KVCache<float> kv(Storage<float>::paged_hnd(k.data(), 4, 1, 2),
                          Storage<float>::paged_hnd(v.data(), 4, 1, 2), {1, 12, 2},
                          {pages, 4, 6, /*read_only_pages=*/1});
  // Keeping the whole shared page and dropping later tokens writes only page 1 and 5: fine.
  Selection ok;
  ok.reset(1, 12, true);
  auto a = ok.add_head(6);
  for (int i = 0; i < 4; ++i) a[static_cast<std::size_t>(i)] = i;
  a[4] = 7;
  a[5] = 11;
  EXPECT_NO_THROW(compact(kv, ok));
  // Dropping token 2 would rewrite token 2 and 3 inside the shared page: rejected, nothing written.
  const auto k_before = k;
  Selection bad;
  bad.reset(1, 12, true);
  auto b = bad.add_head(3);
  b[0] = 0;
  b[1] = 1;
  b[2] = 3;
  expect_error([&] { compact(kv, bad); },
               "selection: expected no write into the read-only pages (the first 1), got head 0 "
               "would overwrite token 2");
  EXPECT_EQ(k, k_before);
}

TEST(Compact, RejectsSelectionsThatDoNotMatch) {
  auto c = make_cache<float>(Layout::nhd, 2, 6, 2, 2, 1);
  expect_error([&] { compact(c.kv(), Selection::all(3, 6)); },
               "selection: expected a selection for kv_heads (2), got 3 heads");
  expect_error([&] { compact(c.kv(), Selection::all(2, 5)); },
               "selection: expected a selection made for tokens (6), got 5 tokens");
  Selection unsorted;
  unsorted.reset(2, 6, true);
  auto u = unsorted.add_head(2);
  u[0] = 3;
  u[1] = 1;
  expect_error([&] { compact(c.kv(), unsorted); },
               "selection: expected ascending unique indices per head, got head 0 index 1 after 3");
  Selection out_of_range;
  out_of_range.reset(2, 6, true);
  out_of_range.add_head(1)[0] = 6;
  expect_error([&] { compact(c.kv(), out_of_range); },
               "selection: expected token indices in [0, 6), got head 0 index 6");
  Selection incomplete;
  incomplete.reset(2, 6, false);
  incomplete.add_head(1)[0] = 0;
  expect_error([&] { compact(c.kv(), incomplete); }, "selection: expected 2 heads filled, got 1");
}

TEST(Selection, MaskAndEvictedRanges) {
  Selection sel;
  sel.reset(2, 10, false);
  auto a = sel.add_head(4);
  a[0] = 0;
  a[1] = 1;
  a[2] = 5;
  a[3] = 9;
  auto b = sel.add_head(2);
  b[0] = 3;
  b[1] = 4;
  std::vector<std::uint8_t> mask(10);
  sel.to_mask(0, mask);
  EXPECT_EQ(mask, (std::vector<std::uint8_t>{1, 1, 0, 0, 0, 1, 0, 0, 0, 1}));
  EXPECT_EQ(sel.evicted_ranges(0), (std::vector<TokenRange>{{2, 5}, {6, 9}}));
  EXPECT_EQ(sel.evicted_ranges(1), (std::vector<TokenRange>{{0, 3}, {5, 10}}));
  EXPECT_EQ(sel.max_size(), 4);
  std::vector<std::uint8_t> wrong(9);
  expect_error([&] { sel.to_mask(0, wrong); }, "mask: expected one entry per token (10), got 9");
}

}  // namespace
}  // namespace kvevict::test
