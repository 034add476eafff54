// Kernels against naive double-precision references: window attention, GQA reduction, pooling,
// top-k and its tie rule.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

template <class A, class B>
double relative_error(const A& got, const B& want) {
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err += std::pow(static_cast<double>(got[i]) - static_cast<double>(want[i]), 2);
    norm += std::pow(static_cast<double>(want[i]), 2);
  }
  return std::sqrt(err / norm);
}

template <class T>
class WindowAttentionTest : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(WindowAttentionTest, ElementTypes);

// Against the double reference on the fp32 originals (< 1e-5 for fp32 storage, < 1e-2 for
// half/bf16, whose storage rounds the inputs), over layouts, GQA groups, windows, blockings.
TYPED_TEST(WindowAttentionTest, MatchesTheDoubleReference) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-2;
  struct Case {
    Layout layout;
    index_t kv_heads, g, n, w, d, block;
    WindowReduce reduce;
    bool causal;
    bool weighted;
    index_t rows_per_pass = 128;
  };
  const Case cases[] = {
      {Layout::hnd, 2, 4, 300, 16, 32, 64, WindowReduce::mean, true, false},
      {Layout::nhd, 1, 1, 97, 5, 16, 7, WindowReduce::sum, true, false},
      {Layout::paged_nhd, 2, 2, 131, 8, 24, 32, WindowReduce::sum, false, false},
      {Layout::cells, 3, 1, 40, 40, 8, 256, WindowReduce::max, true, true},
      {Layout::vllm_blocks, 1, 3, 513, 1, 64, 256, WindowReduce::sum, true, false},
      {Layout::padded, 2, 2, 77, 9, 12, 16, WindowReduce::mean, true, true},
      // Passes of a few rows, splitting heads across passes (NACL's large proxy windows).
      {Layout::hnd, 2, 4, 150, 12, 16, 32, WindowReduce::mean, true, true, 5},
      {Layout::paged_hnd, 1, 2, 90, 30, 8, 64, WindowReduce::max, false, true, 7},
      {Layout::nhd, 2, 3, 64, 10, 8, 16, WindowReduce::sum, true, false, 1},
      // Passes of ≥ 16 rows (AVX-512 builds: the own logits kernel and column sweep), rows not
      // a multiple of its 32-row tiles, blocks not a multiple of its 8-key tiles.
      {Layout::nhd, 2, 2, 203, 10, 20, 256, WindowReduce::sum, true, false},
      {Layout::paged_hnd, 1, 8, 100, 4, 8, 32, WindowReduce::mean, true, true},
      {Layout::hnd, 1, 5, 61, 7, 40, 13, WindowReduce::mean, false, true, 17},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << layout_name(c.layout) << " n=" << c.n << " w=" << c.w << " g=" << c.g
                 << " block=" << c.block << " rows_per_pass=" << c.rows_per_pass);
    auto original = make_cache<float>(Layout::hnd, c.kv_heads, c.n, c.d, c.d, 99);
    auto stored = make_cache<T>(c.layout, c.kv_heads, c.n, c.d, c.d, 99);
    const index_t q_heads = c.kv_heads * c.g;
    std::vector<float> q(static_cast<std::size_t>(q_heads * c.w * c.d));
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    for (float& x : q) x = normal(rng);
    std::vector<T> q_stored(q.size());
    for (std::size_t i = 0; i < q.size(); ++i) q_stored[i] = from_float<T>(q[i]);
    std::vector<float> weights;
    if (c.weighted)
      for (index_t i = 0; i < c.w; ++i) weights.push_back(1.0f + static_cast<float>(i));

    std::vector<float> got(static_cast<std::size_t>(q_heads * c.n));
    Workspace ws;
    kernels::window_attention(
        stored.kv(), QueryWindow<T>(q_stored.data(), q_heads, c.w, c.d),
        {.reduce = c.reduce, .causal = c.causal, .query_weights = weights, .block = c.block}, got,
        ws);
    const auto want =
        reference_attention(original.kv(), q, q_heads, c.w, c.reduce, c.causal, weights);
    EXPECT_LT(relative_error(got, want), tol);

    // Against the reference on the stored (rounded) values the kernel is fp32-exact.
    if constexpr (!std::is_same_v<T, float>) {
      auto rounded = make_cache<float>(Layout::hnd, c.kv_heads, c.n, c.d, c.d, 99);
      for (index_t h = 0; h < c.kv_heads; ++h)
        for (index_t t = 0; t < c.n; ++t)
          for (index_t e = 0; e < c.d; ++e)
            rounded.kv().key(h, t)[static_cast<std::size_t>(e)] =
                to_float(stored.kv().key(h, t)[static_cast<std::size_t>(e)]);
      std::vector<float> q_rounded(q.size());
      for (std::size_t i = 0; i < q.size(); ++i) q_rounded[i] = to_float(q_stored[i]);
      EXPECT_LT(relative_error(got, reference_attention(rounded.kv(), q_rounded, q_heads, c.w,
                                                        c.reduce, c.causal, weights)),
                1e-5);
    }
  }
}

TEST(WindowAttention, LargeLogitsStayFiniteAndExact) {
  // Logits of several hundred: without max subtraction exp would overflow.
  auto c = make_cache<float>(Layout::hnd, 1, 50, 8, 8, 3);
  std::vector<float> q(2 * 3 * 8);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = 60.0f * static_cast<float>((i * 7) % 5) - 90.0f;
  std::vector<float> got(2 * 50);
  Workspace ws;
  kernels::window_attention(c.kv(), QueryWindow<float>(q.data(), 2, 3, 8), {.block = 16}, got, ws);
  const auto want = reference_attention(c.kv(), q, 2, 3, WindowReduce::sum, true, {});
  EXPECT_LT(relative_error(got, want), 1e-5);
  double total = 0;
  for (float x : got) total += x;
  EXPECT_NEAR(total, 2 * 3, 1e-4);  // each query's probabilities sum to 1
}

TEST(WindowAttention, NamesTheNonFiniteInput) {
  auto c = make_cache<float>(Layout::nhd, 2, 20, 4, 4, 3);
  std::vector<float> q(2 * 2 * 4, 0.5f), out(2 * 20);
  Workspace ws;
  c.kv().key(1, 13)[2] = std::numeric_limits<float>::infinity();
  expect_error(
      [&] {
        kernels::window_attention(c.kv(), QueryWindow<float>(q.data(), 2, 2, 4), {}, out, ws);
      },
      "keys: expected finite values, got inf at KV head 1, token 13, element 2");
  c.kv().key(1, 13)[2] = 0.0f;
  q[1 * 8 + 4 + 3] = std::nanf("");
  expect_error(
      [&] {
        kernels::window_attention(c.kv(), QueryWindow<float>(q.data(), 2, 2, 4), {}, out, ws);
      },
      "queries: expected finite values, got nan at query head 1, window position 1, "
      "element 3");
  std::vector<float> short_out(5);
  q[1 * 8 + 4 + 3] = 0.0f;
  expect_error(
      [&] {
        kernels::window_attention(c.kv(), QueryWindow<float>(q.data(), 2, 2, 4), {}, short_out, ws);
      },
      "out: expected q_heads * tokens (40) floats, got 5");
}

// The same check with a pass of 16 rows (the own kernel of AVX-512 builds finds it in its tiles).
TEST(WindowAttention, NamesTheNonFiniteInputInLargePasses) {
  auto c = make_cache<float>(Layout::hnd, 2, 45, 4, 4, 3);
  std::vector<float> q(4 * 8 * 4, 0.5f), out(4 * 45);
  Workspace ws;
  c.kv().key(1, 41)[3] = -std::numeric_limits<float>::infinity();
  expect_error(
      [&] {
        kernels::window_attention(c.kv(), QueryWindow<float>(q.data(), 4, 8, 4), {}, out, ws);
      },
      "keys: expected finite values, got -inf at KV head 1, token 41, element 3");
}

TEST(WindowAttention, NoAllocationOnceWarm) {
  auto c = make_cache<Eigen::half>(Layout::paged_hnd, 2, 200, 16, 16, 3);
  std::vector<Eigen::half> q(4 * 8 * 16, Eigen::half(0.25f));
  std::vector<float> out(4 * 200);
  Workspace ws;
  kernels::window_attention(c.kv(), QueryWindow<Eigen::half>(q.data(), 4, 8, 16), {}, out, ws);
  const auto allocations = ws.allocations();
  for (int i = 0; i < 3; ++i)
    kernels::window_attention(c.kv(), QueryWindow<Eigen::half>(q.data(), 4, 8, 16), {}, out, ws);
  EXPECT_EQ(ws.allocations(), allocations);
}

TEST(ReduceGroups, MeanMaxSumAndShared) {
  // 4 query heads, 2 KV heads (g = 2), n = 3.
  const std::vector<float> in{1, 2, 3, /**/ 3, 0, 1, /**/ 10, 10, 10, /**/ 0, 20, 4};
  std::vector<float> out(6), all(3);
  kernels::reduce_groups(in, 4, 3, 2, GroupReduce::mean, false, out);
  EXPECT_EQ(out, (std::vector<float>{2, 1, 2, 5, 15, 7}));
  kernels::reduce_groups(in, 4, 3, 2, GroupReduce::max, false, out);
  EXPECT_EQ(out, (std::vector<float>{3, 2, 3, 10, 20, 10}));
  kernels::reduce_groups(in, 4, 3, 2, GroupReduce::sum, false, out);
  EXPECT_EQ(out, (std::vector<float>{4, 2, 4, 10, 30, 14}));
  kernels::reduce_groups(in, 4, 3, 2, GroupReduce::mean, true, all);
  EXPECT_EQ(all, (std::vector<float>{3.5f, 8, 4.5f}));
}

TEST(Pool, MaxAndAvgEdgesOddAndEvenKernels) {
  const std::vector<float> in{1, 5, 1, 1, 1, 3};
  std::vector<float> out(6);
  Workspace ws;
  kernels::pool1d(in, out, 3, Pool::max, ws);  // out-of-range neighbours ignored
  EXPECT_EQ(out, (std::vector<float>{5, 5, 5, 1, 3, 3}));
  kernels::pool1d(in, out, 3, Pool::avg, ws);  // zero padding, divided by 3 (count_include_pad)
  const std::vector<float> avg3{2, 7.0f / 3, 7.0f / 3, 1, 5.0f / 3, 4.0f / 3};
  for (int i = 0; i < 6; ++i)
    EXPECT_FLOAT_EQ(out[static_cast<std::size_t>(i)], avg3[static_cast<std::size_t>(i)]);
  kernels::pool1d(in, out, 4, Pool::max,
                  ws);  // even: window [j − 2, j + 1], torch's first n outputs
  EXPECT_EQ(out, (std::vector<float>{5, 5, 5, 5, 3, 3}));
  kernels::pool1d(in, out, 4, Pool::avg, ws);
  const std::vector<float> avg4{6.0f / 4, 7.0f / 4, 8.0f / 4, 8.0f / 4, 6.0f / 4, 5.0f / 4};
  for (int i = 0; i < 6; ++i)
    EXPECT_FLOAT_EQ(out[static_cast<std::size_t>(i)], avg4[static_cast<std::size_t>(i)]);
  kernels::pool1d(in, out, 1, Pool::max, ws);
  EXPECT_EQ(out, in);
  kernels::pool1d(in, out, 9, Pool::max, ws);  // kernel wider than the input
  EXPECT_EQ(out, std::vector<float>(6, 5));
  expect_error([&] { kernels::pool1d(in, out, 0, Pool::max, ws); },
               "kernel: expected a pooling kernel >= 1, got 0");
}

// The O(n) paths for large kernels agree with the direct definition on random data.
TEST(Pool, LargeKernelsAgreeWithTheDefinition) {
  std::mt19937_64 rng(4);
  std::normal_distribution<float> normal;
  Workspace ws;
  for (index_t n : {1, 2, 9, 10, 57, 300})
    for (index_t k : {1, 8, 9, 10, 16, 31, 64, 301, 1000}) {
      std::vector<float> in(static_cast<std::size_t>(n)), out(in.size());
      for (float& x : in) x = normal(rng);
      for (Pool kind : {Pool::max, Pool::avg}) {
        kernels::pool1d(in, out, k, kind, ws);
        for (index_t j = 0; j < n; ++j) {
          const index_t lo = std::max<index_t>(0, j - k / 2), hi = std::min(n, j - k / 2 + k);
          double want = kind == Pool::max ? -1e30 : 0.0;
          for (index_t t = lo; t < hi; ++t)
            want = kind == Pool::max
                       ? std::max(want, static_cast<double>(in[static_cast<std::size_t>(t)]))
                       : want + in[static_cast<std::size_t>(t)];
          if (kind == Pool::avg) want /= static_cast<double>(k);
          ASSERT_NEAR(out[static_cast<std::size_t>(j)], want, 1e-5)
              << "n=" << n << " k=" << k << " j=" << j << " " << to_string(kind);
        }
      }
    }
}

TEST(TopK, TieRuleKeepsTheMoreRecentToken) {
  const std::vector<float> scores{0.5f, 0.2f, 0.5f, 0.2f, 0.5f, 0.1f, -0.0f, 0.0f};
  std::vector<std::uint8_t> keep(8, 0);
  Workspace ws;
  EXPECT_EQ(kernels::top_k(scores, 0, 8, 2, keep, ws), 2);
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{0, 0, 1, 0, 1, 0, 0, 0}));
  std::fill(keep.begin(), keep.end(), 0);
  kernels::top_k(scores, 0, 8, 4, keep, ws);  // three 0.5s, then the later of the two 0.2s
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{1, 0, 1, 1, 1, 0, 0, 0}));
  std::fill(keep.begin(), keep.end(), 0);
  kernels::top_k(scores, 6, 8, 1, keep, ws);  // −0 and +0 are equal: the later wins
  EXPECT_EQ(keep[7], 1);
  EXPECT_EQ(keep[6], 0);
}

TEST(TopK, SkipsKeptTokensAndHonoursTheRange) {
  const std::vector<float> scores{9, 8, 7, 6, 5, 4};
  std::vector<std::uint8_t> keep{1, 0, 0, 0, 0, 0};  // token 0 already kept (protected)
  Workspace ws;
  EXPECT_EQ(kernels::top_k(scores, 0, 4, 2, keep, ws), 2);
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(kernels::top_k(scores, 0, 4, 5, keep, ws), 1);  // only token 3 is left in range
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{1, 1, 1, 1, 0, 0}));
}

TEST(TopK, AgreesWithASortOnRandomScores) {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int> level(0, 20);  // many ties
  Workspace ws;
  for (int trial = 0; trial < 50; ++trial) {
    const index_t n = 1 + trial * 13;
    std::vector<float> scores(static_cast<std::size_t>(n));
    for (float& s : scores) s = static_cast<float>(level(rng)) / 4.0f;
    const index_t k = (trial * 7) % (n + 1);
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(n), 0);
    kernels::top_k(scores, 0, n, k, keep, ws);
    std::vector<index_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      const float sa = scores[static_cast<std::size_t>(a)],
                  sb = scores[static_cast<std::size_t>(b)];
      return sa != sb ? sa > sb : a > b;
    });
    std::vector<std::uint8_t> want(static_cast<std::size_t>(n), 0);
    for (index_t i = 0; i < k; ++i)
      want[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = 1;
    ASSERT_EQ(keep, want) << "n=" << n << " k=" << k;
  }
}

}  // namespace
}  // namespace kvevict::test
