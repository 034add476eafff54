// Quantized caches as views: row layout, scales, reads, selection, compaction and rope_shift
// over q8_0 / q4_0 / fp8 / int8 storage (issue 19).
// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <kvevict/kvevict.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "policy_settings.hpp"
#include "support.hpp"

namespace {

using namespace kvevict;
using test::normals;

/// A dense HND cache of format T quantized from fp32 `k`, `v` ([h][n][d]) the way an engine
/// writes it (per-token amax scales for fp8 and int8), with the dequantized fp32 copy.
template <class T>
struct Quantized {
  index_t h, n, d;
  std::vector<T> k, v;
  std::vector<float> ks, vs;  // per (head, token) scales, [h][n]
  std::vector<float> kf, vf;  // what the cache holds, dequantized
  KVCache<T> view() {
    KVCache<T> kv(Storage<T>::hnd(k.data(), n, d), Storage<T>::hnd(v.data(), n, d), {h, n, d});
    if constexpr (has_external_scale<T>)
      return kv.with_scales(ScaleStorage::hnd(ks.data(), n), ScaleStorage::hnd(vs.data(), n));
    else
      return kv;
  }
  KVCache<float> float_view() {
    return {Storage<float>::hnd(kf.data(), n, d), Storage<float>::hnd(vf.data(), n, d), {h, n, d}};
  }
  Quantized(index_t heads, index_t tokens, index_t dim, std::uint64_t seed)
      : h(heads), n(tokens), d(dim) {
    const index_t row = dim / values_per_element<T>;
    k.resize(static_cast<std::size_t>(h * n * row));
    v.resize(k.size());
    ks.assign(static_cast<std::size_t>(h * n), 1.0f);
    vs.assign(ks.size(), 1.0f);
    kf.resize(static_cast<std::size_t>(h * n * d));
    vf.resize(kf.size());
    const auto kin = normals(kf.size(), seed), vin = normals(kf.size(), seed + 1);
    auto kv = view();
    for (index_t hh = 0; hh < h; ++hh)
      for (index_t t = 0; t < n; ++t) {
        const std::size_t o = static_cast<std::size_t>((hh * n + t) * d);
        kv.write(Tensor::keys, hh, t, kin.data() + o);
        kv.write(Tensor::values, hh, t, vin.data() + o);
        kv.read(Tensor::keys, hh, t, kf.data() + o);
        kv.read(Tensor::values, hh, t, vf.data() + o);
      }
  }
};

/// The argument an error names: its message up to the first ':'.
std::string arg_of(const error& e) {
  const std::string m = e.what();
  return m.substr(0, m.find(':'));
}

template <class T>
class QuantViews : public ::testing::Test {};
using Formats = ::testing::Types<q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8>;
TYPED_TEST_SUITE(QuantViews, Formats);

TEST(QuantViewLayout, RowsAreBlocksAndHeadDimMustFillThem) {
  std::vector<q8_0> mem(2 * 4 * 4);
  const auto s = Storage<q8_0>::nhd(mem.data(), 2, 128);
  EXPECT_EQ(s.head_stride, 4);  // 128 values = 4 blocks
  EXPECT_EQ(s.token_stride, 8);
  const KVCache<q8_0> kv(s, Storage<q8_0>::nhd(mem.data() + 16, 2, 128), {2, 2, 128});
  EXPECT_EQ(kv.row_elements(Tensor::keys), 4);
  EXPECT_EQ(kv.key(1, 1).size(), 4u);
  EXPECT_EQ(kv.key(1, 1).data(), mem.data() + 12);
  try {
    (void)KVCache<q8_0>(Storage<q8_0>{mem.data(), 1, 2, 0}, Storage<q8_0>{mem.data() + 16, 1, 2, 0},
                        {2, 2, 48});
    FAIL() << "head_dim 48 accepted for q8_0";
  } catch (const error& e) {
    EXPECT_EQ(arg_of(e), "head_dim");
    EXPECT_NE(std::string(e.what()).find("a multiple of 32"), std::string::npos) << e.what();
  }
  std::vector<q4_0> m4(8);
  EXPECT_THROW(((void)KVCache<q4_0>(Storage<q4_0>::hnd(m4.data(), 2, 32),
                                    Storage<q4_0>::hnd(m4.data() + 4, 2, 32), {2, 2, 32, 40})),
               error);
}

TEST(QuantViewLayout, ReadDequantizesWithTheTokensScale) {
  // int8, per-token fp16 scales [h][n]: value = q · scale, by hand.
  std::vector<int8> k(2 * 3 * 2), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i].q = static_cast<std::int8_t>(i);
    v[i].q = static_cast<std::int8_t>(-static_cast<int>(i));
  }
  std::vector<Eigen::half> ks(6), vs(6);
  for (int i = 0; i < 6; ++i) {
    ks[static_cast<std::size_t>(i)] = Eigen::half(0.5f * static_cast<float>(i + 1));
    vs[static_cast<std::size_t>(i)] = Eigen::half(0.25f);
  }
  const auto kv =
      KVCache<int8>(Storage<int8>::hnd(k.data(), 3, 2), Storage<int8>::hnd(v.data(), 3, 2),
                    {2, 3, 2})
          .with_scales(ScaleStorage::hnd(ks.data(), 3), ScaleStorage::hnd(vs.data(), 3));
  float row[2];
  kv.read(Tensor::keys, 1, 2, row);  // head 1, token 2: q = 10, 11; scale index 5 → 3.0
  EXPECT_EQ(row[0], 30.0f);
  EXPECT_EQ(row[1], 33.0f);
  kv.read(Tensor::values, 0, 1, row);  // q = −2, −3; scale 0.25
  EXPECT_EQ(row[0], -0.5f);
  EXPECT_EQ(row[1], -0.75f);
  EXPECT_EQ(kv.scale(Tensor::keys, 0, 0), 0.5f);

  // fp8 without scales: every scale 1 (vLLM with no checkpoint scales); per-tensor scale 2.
  std::vector<fp8_e4m3> f(4, fp8_e4m3{0x38});  // 0x38 = 1.0 in e4m3fn
  KVCache<fp8_e4m3> fv(Storage<fp8_e4m3>::hnd(f.data(), 2, 1),
                       Storage<fp8_e4m3>::hnd(f.data() + 2, 2, 1), {1, 2, 1});
  fv.read(Tensor::keys, 0, 1, row);
  EXPECT_EQ(row[0], 1.0f);
  float two = 2.0f;
  fv = fv.with_scales(ScaleStorage::per_tensor(&two), {});
  fv.read(Tensor::keys, 0, 1, row);
  EXPECT_EQ(row[0], 2.0f);
  fv.read(Tensor::values, 0, 0, row);
  EXPECT_EQ(row[0], 1.0f);
}

TEST(QuantViewLayout, BadScalesAreRejectedByName) {
  std::vector<int8> k(8), v(8);
  std::vector<float> s(16, 1.0f);
  const KVCache<int8> kv(Storage<int8>::hnd(k.data(), 4, 1), Storage<int8>::hnd(v.data(), 4, 1),
                         {2, 4, 1});
  const auto arg = [&](ScaleStorage ks, ScaleStorage vs) -> std::string {
    try {
      (void)kv.with_scales(ks, vs);
    } catch (const error& e) {
      return arg_of(e);
    }
    return "accepted";
  };
  EXPECT_EQ(arg({nullptr, ScaleType::float32, 1, 0, 0}, {}), "key_scales.data");
  // per-token scales shared by the two heads: compaction could not move them per head
  EXPECT_EQ(arg(ScaleStorage::strided(s.data(), {.head = 0, .token = 1}), {}), "key_scales");
  EXPECT_EQ(arg(ScaleStorage::hnd(s.data(), 4), ScaleStorage::hnd(s.data() + 4, 4)),
            "value_scales.data");
  EXPECT_EQ(arg(ScaleStorage::hnd(s.data(), 4), ScaleStorage::hnd(s.data() + 8, 4)), "accepted");
  EXPECT_EQ(arg(ScaleStorage::per_head(s.data()), ScaleStorage::per_head(s.data())), "accepted");
}

TEST(QuantViewLayout, NonFiniteScaleIsOneErrorAndTheSelectionStaysEmpty) {
  Quantized<int8> c(2, 64, 32, 11);
  c.ks[static_cast<std::size_t>(1 * 64 + 7)] = std::nanf("");
  const auto q = normals(4 * 8 * 32, 3);
  const QueryWindow<float> queries(q.data(), 4, 8, 32);
  Workspace ws;
  for (const char* name : {"snapkv", "knorm", "keydiff", "tova", "lagkv"}) {
    Selection sel;
    const auto policy = make_policy(name, {.settings = test::small_settings(name)});
    try {
      select(policy, c.view(), queries, Budget::tokens(32), sel, ws);
      ADD_FAILURE() << name << " accepted a NaN scale";
    } catch (const error& e) {
      EXPECT_EQ(arg_of(e), "key_scales") << name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("KV head 1, token 7"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(sel.complete()) << name;
  }
}

// Every policy selects on a quantized cache exactly what it selects on the fp32 values that
// cache holds: the kernels dequantize each row once and run the fp32 code.
TYPED_TEST(QuantViews, EveryPolicySelectsAsOnTheDequantizedValues) {
  using T = TypeParam;
  Quantized<T> c(2, 128, 64, 21);
  const index_t q_heads = 4, w = 16;
  const auto q = normals(static_cast<std::size_t>(q_heads * w * 64), 5);
  const QueryWindow<float> queries(q.data(), q_heads, w, 64);
  const auto wo_data = normals(static_cast<std::size_t>(q_heads * 64 * 32), 9, 0.1f);
  const auto wo = OutputProjection::dense(wo_data.data(), q_heads, 64, 32);
  Workspace ws;
  for (const auto name : policy_names()) {
    const auto policy =
        make_policy(name, {.settings = test::small_settings(name), .seed = 7, .wo = &wo});
    const Budget budget = budget_free(policy) ? Budget::none() : Budget::tokens(40);
    Selection on_q, on_f;
    select(policy, c.view(), queries, budget, on_q, ws);
    select(policy, c.float_view(), queries, budget, on_f, ws);
    ASSERT_EQ(on_q.stored_heads(), on_f.stored_heads()) << name;
    for (index_t h = 0; h < on_q.stored_heads(); ++h) {
      const auto a = on_q.kept(h), b = on_f.kept(h);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()))
          << name << " head " << h << " (" << dtype_name<T>() << ")";
    }
  }
}

// Compaction moves raw blocks and, for fp8 / int8, the per-token scales with them: afterwards
// token i reads exactly what token kept[i] read before.
TYPED_TEST(QuantViews, CompactionMovesBlocksAndScalesBitExactly) {
  using T = TypeParam;
  Quantized<T> c(3, 50, 64, 31);
  const auto before_k = c.k;
  const auto before_ks = c.ks;
  const auto before_kf = c.kf, before_vf = c.vf;
  Selection sel;
  sel.reset(3, 50, false);
  std::mt19937_64 rng(4);
  for (index_t h = 0; h < 3; ++h) {
    std::vector<token_t> kept;
    for (token_t t = 0; t < 50; ++t)
      if (std::bernoulli_distribution(0.5)(rng)) kept.push_back(t);
    const auto dst = sel.add_head(static_cast<index_t>(kept.size()));
    std::copy(kept.begin(), kept.end(), dst.begin());
  }
  const auto view = c.view();
  const Compaction out = compact(view, sel);
  const index_t row = 64 / values_per_element<T>;
  std::vector<float> got(64);
  for (index_t h = 0; h < 3; ++h) {
    const auto kept = sel.kept(h);
    for (std::size_t i = 0; i < kept.size(); ++i) {
      const auto from = static_cast<std::size_t>((h * 50 + kept[i]) * row);
      const auto to = static_cast<std::size_t>((h * 50 + static_cast<index_t>(i)) * row);
      EXPECT_EQ(std::memcmp(&c.k[to], &before_k[from], static_cast<std::size_t>(row) * sizeof(T)),
                0);
      EXPECT_EQ(c.ks[static_cast<std::size_t>(h * 50) + i],
                before_ks[static_cast<std::size_t>(h * 50 + kept[i])]);
      view.read(Tensor::values, h, static_cast<index_t>(i), got.data());
      for (index_t e = 0; e < 64; ++e)
        ASSERT_EQ(got[static_cast<std::size_t>(e)],
                  before_vf[static_cast<std::size_t>((h * 50 + kept[i]) * 64 + e)]);
      view.read(Tensor::keys, h, static_cast<index_t>(i), got.data());
      for (index_t e = 0; e < 64; ++e)
        ASSERT_EQ(got[static_cast<std::size_t>(e)],
                  before_kf[static_cast<std::size_t>((h * 50 + kept[i]) * 64 + e)]);
    }
    EXPECT_EQ(out.lengths[static_cast<std::size_t>(h)], static_cast<index_t>(kept.size()));
  }
}

// rope_shift on quantized keys = dequantize, rotate, requantize: the result is the rotated
// fp32 key within one rounding step of the format per value (the bound in rope.hpp).
TYPED_TEST(QuantViews, RopeShiftRequantizesWithinOneRoundingStep) {
  using T = TypeParam;
  Quantized<T> c(2, 16, 64, 41);
  const auto before = c.kf;
  const Rope rope{.base = 10000.0, .style = RopeStyle::neox};
  const auto view = c.view();
  rope_shift(view, std::int64_t{37}, rope);
  std::vector<float> want(before), tmp(64);
  Storage<float> s = Storage<float>::hnd(want.data(), 16, 64);
  std::vector<float> vdummy(want.size());
  const KVCache<float> fv(s, Storage<float>::hnd(vdummy.data(), 16, 64), {2, 16, 64});
  rope_shift(fv, std::int64_t{37}, rope);
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < 16; ++t) {
      view.read(Tensor::keys, h, t, tmp.data());
      const float* w = want.data() + (h * 16 + t) * 64;
      float amax = 0;
      for (index_t e = 0; e < 64; ++e) amax = std::max(amax, std::fabs(w[e]));
      for (index_t e = 0; e < 64; ++e) {
        const float x = w[e];
        float step;  // one rounding step of the format at x (half of it bounds the error)
        if constexpr (std::same_as<T, q8_0>) step = amax / 127.0f;
        // q4_0's codes are −8 … 7: the sign opposite the block's largest value clamps at 7,
        // a whole step (ggml's own rounding).
        else if constexpr (std::same_as<T, q4_0>)
          step = 2.0f * amax / 8.0f;
        else if constexpr (std::same_as<T, int8>)
          step = amax / 127.0f;
        else if constexpr (std::same_as<T, fp8_e4m3>)
          step = std::max(std::fabs(x) / 8.0f, amax / 448.0f * std::ldexp(1.0f, -9));
        else
          step = std::max(std::fabs(x) / 4.0f, amax / 57344.0f * std::ldexp(1.0f, -16));
        // + the fp16 rounding of ggml's block scale (relative 2^-11 of the largest value)
        EXPECT_LE(std::fabs(tmp[static_cast<std::size_t>(e)] - x),
                  0.5f * step + amax * 1e-3f + 1e-6f)
            << dtype_name<T>() << " head " << h << " token " << t << " element " << e;
      }
    }
}

TEST(QuantViewLayout, PagedPerTokenScalesFollowThePageTable) {
  // int8, pool [pages=3][heads=1][page=2][d=1], scales [pages][heads][page]; pages 2, 0.
  std::vector<int8> k(6), v(6);
  std::vector<float> ks{1, 2, 3, 4, 5, 6}, vs(6, 1.0f);
  for (int i = 0; i < 6; ++i) k[static_cast<std::size_t>(i)].q = 1;
  const std::vector<std::int32_t> pages{2, 0};
  const auto kv = KVCache<int8>(Storage<int8>::paged_hnd(k.data(), 2, 1, 1),
                                Storage<int8>::paged_hnd(v.data(), 2, 1, 1), {1, 4, 1},
                                {.pages = pages, .page_size = 2, .pool_pages = 3})
                      .with_scales(ScaleStorage::paged_hnd(ks.data(), 2, 1),
                                   ScaleStorage::paged_hnd(vs.data(), 2, 1));
  EXPECT_EQ(kv.scale(Tensor::keys, 0, 0), 5.0f);  // page 2, row 0
  EXPECT_EQ(kv.scale(Tensor::keys, 0, 3), 2.0f);  // page 0, row 1
  Selection sel;
  sel.reset(1, 4, false);
  const auto dst = sel.add_head(2);
  dst[0] = 1, dst[1] = 3;
  compact(kv, sel);
  EXPECT_EQ(kv.scale(Tensor::keys, 0, 0), 6.0f);
  EXPECT_EQ(kv.scale(Tensor::keys, 0, 1), 2.0f);
  EXPECT_THROW((void)KVCache<int8>(Storage<int8>::paged_hnd(k.data(), 2, 1, 1),
                                   Storage<int8>::paged_hnd(v.data(), 2, 1, 1), {1, 4, 1},
                                   {.pages = pages, .page_size = 2, .pool_pages = 3})
                   .with_scales(ScaleStorage::hnd(ks.data(), 2), {}),
               error);
}

}  // namespace
