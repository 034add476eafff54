// compact() as a property: over random layouts (dense with random padding and head/token order,
// paged with random page sizes, pools, page orders and K/V interleaving, gathers), random shapes,
// every dtype — float, half, bf16 and the quantized formats, whose rows are blocks and whose
// per-token fp8 / int8 scales move with them — and random selections (shared or per head, ragged,
// empty, runs), every kept entry moves bit for bit, every head's tokens beyond its new length and
// all memory outside the view's spans stay untouched, and a selection that would write a read-only
// page writes nothing. SPDX-License-Identifier: Apache-2.0
#include "support.hpp"

namespace kvevict::test {
namespace {

/// A random cache: one buffer holds K and V (so interleavings are possible); everything is
/// filled with a per-element pattern first, so any stray write shows.
template <class T>
struct RandomCache {
  std::vector<T> memory;
  std::vector<float> scale_memory;  ///< per-token K and V scales (fp8, int8), with a gap
  std::vector<std::int32_t> pages;
  std::optional<KVCache<T>> view;
  index_t heads = 0, tokens = 0, d = 0, dv = 0, read_only = 0, page_size = 0, pool = 0;
  std::string description;

  explicit RandomCache(std::mt19937_64& rng) {
    auto pick = [&](index_t lo, index_t hi) {
      return std::uniform_int_distribution<index_t>(lo, hi)(rng);
    };
    heads = pick(1, 5);
    tokens = pick(1, 70);
    // d and dv count elements of T (a q8_0 element is a block of 32 values)
    constexpr index_t vpe = values_per_element<T>;
    const index_t most = vpe == 1 ? 24 : 3;
    d = pick(1, most);
    dv = pick(0, 1) ? d : pick(1, most);
    const int kind = static_cast<int>(pick(0, 4));
    const Shape shape{heads, tokens, d * vpe, dv * vpe};
    Storage<T> ks{}, vs{};
    index_t k_size = 0, v_size = 0, v_offset = 0;
    if (kind <= 1) {  // dense: head-major or token-major, random padding, random offsets
      const index_t pad_t = pick(0, 5), pad_h = pick(0, 9), cap = tokens + pick(0, 6);
      auto dense = [&](index_t width, index_t& size) -> Storage<T> {
        if (kind == 0) {  // [h][cap][width + pad_t] + pad_h between heads
          const index_t ts = width + pad_t, hs = cap * ts + pad_h;
          size = heads * hs;
          return {nullptr, hs, ts, 0};
        }
        const index_t hs = width + pad_h, ts = heads * hs + pad_t;  // [cap][h][width + pad]
        size = cap * ts;
        return {nullptr, hs, ts, 0};
      };
      ks = dense(d, k_size);
      vs = dense(dv, v_size);
      v_offset = k_size + pick(0, 7);
      description = kind == 0 ? "dense head-major" : "dense token-major";
    } else {  // paged: page-major pools, random page size and pool, shuffled page order
      page_size = kind == 4 ? 1 : pick(1, 9);  // 4: a gather (llama.cpp cells)
      const index_t n_pages = (tokens + page_size - 1) / page_size;
      pool = n_pages + pick(0, 6);
      std::vector<std::int32_t> ids(static_cast<std::size_t>(pool));
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), rng);
      pages.assign(ids.begin(), ids.begin() + n_pages);
      read_only = pick(0, 3) == 0 ? pick(0, std::min<index_t>(n_pages, 2)) : 0;
      const bool hnd = pick(0, 1) == 1;
      const bool interleaved = kind == 3 && dv == d;  // vLLM (blocks, 2, page, h, d)
      auto page_layout = [&](index_t width) -> std::pair<index_t, index_t> {  // head, token
        return hnd ? std::pair{page_size * width, width} : std::pair{width, heads * width};
      };
      const auto [khs, kts] = page_layout(d);
      const auto [vhs, vts] = page_layout(dv);
      const index_t k_page = heads * page_size * d + pick(0, 3),
                    v_page = heads * page_size * dv + pick(0, 3);
      if (interleaved) {
        ks = {nullptr, khs, kts, 2 * k_page};
        vs = {nullptr, vhs, vts, 2 * k_page};
        k_size = 2 * k_page * pool;
        v_offset = k_page;
        v_size = k_size - k_page;
        description = "paged interleaved";
      } else {
        ks = {nullptr, khs, kts, k_page};
        vs = {nullptr, vhs, vts, v_page};
        k_size = k_page * pool;
        v_size = v_page * pool;
        v_offset = k_size + pick(0, 5);
        description = kind == 4 ? "gather" : (hnd ? "paged HND" : "paged NHD");
      }
      description +=
          " page_size=" + std::to_string(page_size) + " read_only=" + std::to_string(read_only);
    }
    memory.resize(static_cast<std::size_t>(std::max(k_size, v_offset + v_size)));
    for (std::size_t i = 0; i < memory.size(); ++i)
      memory[i] = element_from<T>(static_cast<float>(i % 977) * 0.5f - 100.0f);
    ks.data = memory.data();
    vs.data = memory.data() + v_offset;
    if (pages.empty())
      view.emplace(ks, vs, shape);
    else
      view.emplace(ks, vs, shape, PageTable{pages, page_size, pool, read_only});
    if constexpr (has_external_scale<T>) {  // per-token scales, head- or token-major per page
      const bool head_major = pick(0, 1) == 1;
      const index_t page = pages.empty() ? tokens + pick(0, 4) : page_size;
      const index_t per_page = heads * page, copies = pages.empty() ? 1 : pool;
      const Strides st = head_major ? Strides{.head = page, .token = 1, .page = per_page}
                                    : Strides{.head = 1, .token = heads, .page = per_page};
      const index_t gap = pick(0, 3);
      scale_memory.resize(static_cast<std::size_t>(2 * per_page * copies + gap));
      for (std::size_t i = 0; i < scale_memory.size(); ++i)
        scale_memory[i] = static_cast<float>(i) + 0.25f;
      auto one = [&](float* p) {
        return pages.empty() ? ScaleStorage::strided(p, {.head = st.head, .token = st.token})
                             : ScaleStorage::strided(p, st);
      };
      view.emplace(view->with_scales(one(scale_memory.data()),
                                     one(scale_memory.data() + per_page * copies + gap)));
      description += head_major ? " scales head-major" : " scales token-major";
    }
    // Logical content from the random stream (distinct from the background pattern).
    std::normal_distribution<float> normal;
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < tokens; ++t) {
        for (T& x : view->key(h, t)) x = element_from<T>(normal(rng));
        for (T& x : view->value(h, t)) x = element_from<T>(normal(rng));
      }
    description += " heads=" + std::to_string(heads) + " tokens=" + std::to_string(tokens) +
                   " d=" + std::to_string(d) + " dv=" + std::to_string(dv);
  }
};

/// Random selections: shared or per head; per head a density, or runs, or nothing, or all.
Selection random_selection(std::mt19937_64& rng, index_t heads, index_t tokens) {
  Selection sel;
  const bool shared = rng() % 2 == 0;
  sel.reset(heads, tokens, shared);
  std::vector<token_t> kept;
  for (index_t h = 0; h < sel.stored_heads(); ++h) {
    kept.clear();
    switch (rng() % 4) {
      case 0: {  // independent tokens
        std::bernoulli_distribution coin(std::uniform_real_distribution<double>(0, 1)(rng));
        for (index_t t = 0; t < tokens; ++t)
          if (coin(rng)) kept.push_back(static_cast<token_t>(t));
        break;
      }
      case 1: {  // runs
        bool keep = rng() % 2 == 0;
        for (index_t t = 0; t < tokens; ++t) {
          if (rng() % 6 == 0) keep = !keep;
          if (keep) kept.push_back(static_cast<token_t>(t));
        }
        break;
      }
      case 2:  // nothing (an empty head)
        break;
      default:  // everything
        for (index_t t = 0; t < tokens; ++t) kept.push_back(static_cast<token_t>(t));
    }
    const auto out = sel.add_head(static_cast<index_t>(kept.size()));
    std::copy(kept.begin(), kept.end(), out.begin());
  }
  return sel;
}

template <class T>
class CompactProperty : public ::testing::Test {};
using ElementTypes =
    ::testing::Types<float, Eigen::half, Eigen::bfloat16, q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8>;
TYPED_TEST_SUITE(CompactProperty, ElementTypes);

TYPED_TEST(CompactProperty, KeptEntriesMoveBitForBitNothingElseChanges) {
  using T = TypeParam;
  std::mt19937_64 rng(20261123 + sizeof(T) + 7 * static_cast<int>(dtype_of<T>()));
  int compacted = 0, rejected = 0;
  for (int trial = 0; trial < 600; ++trial) {
    RandomCache<T> c(rng);
    KVCache<T>& kv = *c.view;
    const Selection sel = random_selection(rng, c.heads, c.tokens);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << c.description
                                      << (sel.shared() ? " shared" : " per head"));
    // Before: every element's bits, which elements are in a span, each span's content.
    std::vector<decltype(bits(T{}))> before(c.memory.size());
    for (std::size_t i = 0; i < before.size(); ++i) before[i] = bits(c.memory[i]);
    std::vector<std::uint8_t> in_span(c.memory.size(), 0);
    for (index_t h = 0; h < c.heads; ++h)
      for (index_t t = 0; t < c.tokens; ++t)
        for (auto span : {kv.key(h, t), kv.value(h, t)})
          for (T& x : span) in_span[static_cast<std::size_t>(&x - c.memory.data())] = 1;
    const auto logical = snapshot(kv);
    std::vector<float> scales_before;  // per (tensor, head, token)
    for (const Tensor which : {Tensor::keys, Tensor::values})
      for (index_t h = 0; h < c.heads; ++h)
        for (index_t t = 0; t < c.tokens; ++t) scales_before.push_back(kv.scale(which, h, t));
    const auto scale_memory_before = c.scale_memory;
    const index_t row = c.d + c.dv;

    // Would the selection move a token inside the read-only pages?
    bool writes_read_only = false;
    for (index_t h = 0; h < sel.stored_heads(); ++h) {
      const auto k = sel.kept(h);
      for (std::size_t i = 0; i < k.size(); ++i)
        if (static_cast<index_t>(i) < c.read_only * c.page_size && k[i] != static_cast<token_t>(i))
          writes_read_only = true;
    }
    Compaction result;
    if (writes_read_only) {
      EXPECT_THROW(compact(kv, sel, result), kvevict::error);
      for (std::size_t i = 0; i < before.size(); ++i)
        ASSERT_EQ(bits(c.memory[i]), before[i]) << "a rejected compact wrote element " << i;
      ASSERT_EQ(c.scale_memory, scale_memory_before) << "a rejected compact wrote a scale";
      ++rejected;
      continue;
    }
    compact(kv, sel, result);
    ++compacted;
    for (std::size_t i = 0; i < before.size(); ++i)
      if (!in_span[i]) {
        ASSERT_EQ(bits(c.memory[i]), before[i]) << "outside the spans: " << i;
      }
    for (index_t h = 0; h < c.heads; ++h) {
      const auto kept = sel.kept(h);
      ASSERT_EQ(result.lengths[static_cast<std::size_t>(h)], static_cast<index_t>(kept.size()));
      for (index_t t = 0; t < c.tokens; ++t) {
        // Token t now holds kept[t]; beyond the new length it holds what it held.
        const index_t source =
            t < static_cast<index_t>(kept.size()) ? kept[static_cast<std::size_t>(t)] : t;
        const auto* expected = logical.data() + (h * c.tokens + source) * row;
        const auto key = kv.key(h, t);
        const auto value = kv.value(h, t);
        for (index_t e = 0; e < c.d; ++e)
          ASSERT_EQ(bits(key[static_cast<std::size_t>(e)]), expected[e])
              << "head " << h << " token " << t << " key " << e;
        for (index_t e = 0; e < c.dv; ++e)
          ASSERT_EQ(bits(value[static_cast<std::size_t>(e)]), expected[c.d + e])
              << "head " << h << " token " << t << " value " << e;
        if (t < static_cast<index_t>(kept.size())) {
          ASSERT_EQ(result.kept_positions(h)[static_cast<std::size_t>(t)], source);
        }
        for (int which = 0; which < 2; ++which)
          ASSERT_EQ(
              kv.scale(which == 0 ? Tensor::keys : Tensor::values, h, t),
              scales_before[static_cast<std::size_t>((which * c.heads + h) * c.tokens + source)])
              << "head " << h << " token " << t << (which == 0 ? " key" : " value") << " scale";
      }
    }
  }
  // Both outcomes were exercised, and most cases compacted.
  EXPECT_GT(compacted, 400);
  EXPECT_GT(rejected, 5);
}

}  // namespace
}  // namespace kvevict::test
