// The evaluation layer: metrics on hand values, deterministic workloads with the structure they
// promise, the SVG plot, and a comparison end to end.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/compare.hpp>
#include <kvevict/eval/svg.hpp>

#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

Selection keep(index_t heads, index_t n, std::vector<token_t> tokens) {
  Selection s;
  s.reset(heads, n, true);
  const auto out = s.add_head(static_cast<index_t>(tokens.size()));
  std::copy(tokens.begin(), tokens.end(), out.begin());
  return s;
}

// Keys of 0 make every query attend uniformly (1/4 each) to values [1,10], [2,20], [3,30],
// [4,40]: o = [2.5, 25]. Keeping {0, 1}: ô = [1.5, 15], error 0.4, mass 0.5. W_o = [[1, −1], [0,
// 2]] (d_v 2 → hidden 2): y = [2.5, 47.5], ŷ = [1.5, 28.5]; error ‖(1, 19)‖ / ‖(2.5, 47.5)‖.
TEST(Metrics, HandValues) {
  const std::vector<float> k(4, 0.0f), v{1, 10, 2, 20, 3, 30, 4, 40}, q{1.0f}, wo{1, -1, 0, 2};
  const std::vector<index_t> needles{1, 3};
  const eval::EvalLayer layer{k.data(), v.data(), q.data(), wo.data(), 1, 1,
                              4,        1,        2,        1,         2, needles};
  const eval::Metrics m = eval::evaluate(layer, keep(1, 4, {0, 1}));
  EXPECT_NEAR(m.error, 0.4, 1e-6);
  EXPECT_NEAR(m.kept_mass, 0.5, 1e-6);
  EXPECT_NEAR(m.error_wo, std::sqrt(1.0 + 361.0) / std::sqrt(6.25 + 2256.25), 1e-6);
  EXPECT_NEAR(m.needle_recall, 0.5, 1e-12);
  ASSERT_EQ(m.head_error_wo.size(), 1u);
  EXPECT_NEAR(m.head_error_wo[0], m.error_wo, 1e-9);  // one head: its share is the layer's
  // Symmetric tokens {0, 3} average to the full output exactly.
  const eval::Metrics symmetric = eval::evaluate(layer, keep(1, 4, {0, 3}));
  EXPECT_NEAR(symmetric.error, 0.0, 1e-7);
  EXPECT_NEAR(eval::evaluate(layer, keep(1, 4, {0, 1, 2, 3})).error, 0.0, 1e-7);
}

TEST(Workload, DeterministicPerSeed) {
  eval::WorkloadSpec spec = eval::workload_preset("default");
  spec.n = 512;
  const auto a = eval::generate(spec), b = eval::generate(spec);
  EXPECT_EQ(a.keys, b.keys);
  EXPECT_EQ(a.values, b.values);
  EXPECT_EQ(a.queries, b.queries);
  EXPECT_EQ(a.future, b.future);
  EXPECT_EQ(a.wo, b.wo);
  spec.seed = 1;
  const auto c = eval::generate(spec);
  EXPECT_NE(a.keys, c.keys);
  EXPECT_EQ(a.needles, c.needles);  // positions depend on the sizes only
  for (auto name : eval::workload_names()) {
    auto s = eval::workload_preset(name);
    s.n = std::min<index_t>(s.n, 256);
    EXPECT_NO_THROW(eval::generate(s)) << name;
  }
  expect_error([] { eval::workload_preset("nope"); },
               "workload: expected one of default, needle_inside, needle_after, heavy_hitters, "
               "recency, sinks, value_norms, uniform_values, long, got 'nope'");
  eval::WorkloadSpec bad = spec;
  expect_error(
      [&] { eval::set_knob(bad, "needls", "3"); },
      "--workload-set: expected a knob: n, head_dim, kv_heads, group, window, future, "
      "sinks, sink_strength, sink_value, recency, heavy_fraction, heavy_strength, needles, "
      "needle_strength, question, value_sigma, rope_base, noise, seed, got 'needls'");
  expect_error([&] { eval::set_knob(bad, "n", "1.5"); },
               "n: expected a non-negative integer, got '1.5'");
}

// The structure the generator promises shows in the attention it produces.
TEST(Workload, HasTheStructureItDescribes) {
  eval::WorkloadSpec spec = eval::workload_preset("needle_after");
  spec.n = 2048;
  const eval::Layer l = eval::layer_from(eval::generate(spec));
  const index_t n = l.n, d = l.d, g = l.q_heads / l.kv_heads;
  auto attention = [&](const float* q, index_t kvh) {
    std::vector<float> p(static_cast<std::size_t>(n));
    for (index_t j = 0; j < n; ++j)
      p[static_cast<std::size_t>(j)] =
          kernels::dot(q, l.keys.data() + (kvh * n + j) * d, d) / std::sqrt(static_cast<float>(d));
    kernels::softmax_inplace(p);
    return p;
  };
  double sink = 0, recent = 0, far = 0, needle_hit = 0, needle_miss = 0;
  for (index_t h = 0; h < l.q_heads; ++h) {
    // Question i (future query i) finds needle i; an ordinary future query does not.
    for (std::size_t i = 0; i < l.needles.size(); ++i) {
      const auto p =
          attention(l.future.data() + (h * l.future_count + static_cast<index_t>(i)) * d, h / g);
      needle_hit += p[static_cast<std::size_t>(l.needles[i])] /
                    static_cast<double>(l.q_heads * l.needles.size());
    }
    const auto p =
        attention(l.future.data() + (h * l.future_count + l.future_count - 1) * d, h / g);
    for (index_t s = 0; s < spec.sinks; ++s)
      sink += p[static_cast<std::size_t>(s)] / static_cast<double>(l.q_heads);
    for (index_t i : l.needles)
      needle_miss += p[static_cast<std::size_t>(i)] / static_cast<double>(l.q_heads);
    // Recency: the last context query (position n − 1) attends more to its neighbours
    // (distance 1–64) than to tokens ~1000 back; medians are robust to the odd heavy hitter.
    const auto pc = attention(l.queries.data() + (h * n + n - 1) * d, h / g);
    auto median = [&](index_t from) {
      std::vector<float> part(pc.begin() + from, pc.begin() + from + 64);
      std::nth_element(part.begin(), part.begin() + 32, part.end());
      return static_cast<double>(part[32]) / static_cast<double>(l.q_heads);
    };
    recent += median(n - 65);
    far += median(n - 1100);
  }
  EXPECT_GT(sink, 0.3);          // the sinks draw a large share
  EXPECT_GT(needle_hit, 0.2);    // a question finds its needle
  EXPECT_LT(needle_miss, 0.01);  // an ordinary query ignores the needles
  EXPECT_GT(recent, 2.0 * far);  // recency from RoPE
}

/// Checks that `xml` is well formed (balanced, properly nested tags; quoted attributes) and
/// returns the data-series of its <path> elements.
std::vector<std::string> check_svg(const std::string& xml) {
  std::vector<std::string> stack, series;
  std::size_t i = 0;
  while ((i = xml.find('<', i)) != std::string::npos) {
    const std::size_t end = xml.find('>', i);
    EXPECT_NE(end, std::string::npos);
    std::string tag = xml.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty() || tag[0] == '?' || tag[0] == '!') continue;
    std::size_t quotes = 0;
    for (char c : tag) quotes += c == '"';
    EXPECT_EQ(quotes % 2, 0u) << tag;
    if (tag[0] == '/') {
      EXPECT_FALSE(stack.empty()) << tag;
      if (!stack.empty()) {
        EXPECT_EQ(stack.back(), tag.substr(1));
        stack.pop_back();
      }
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (name == "path") {
      const auto at = tag.find("data-series=\"");
      EXPECT_NE(at, std::string::npos);
      series.push_back(tag.substr(at + 13, tag.find('"', at + 13) - at - 13));
    }
    if (tag.back() != '/') stack.push_back(name);
  }
  EXPECT_TRUE(stack.empty());
  return series;
}

TEST(Svg, WellFormedWithOnePathPerPolicy) {
  eval::Panel p{"default: <error> & budget", "budget", "error", true, true, {}};
  for (std::string name : {"snapkv", "h2o", "a \"quoted\" one"})
    p.series.push_back({name, {{0.1, 0.5}, {0.2, 0.25}, {0.3, 0.1}}});
  const auto series = check_svg(eval::render_svg({p}));
  EXPECT_EQ(series, (std::vector<std::string>{"snapkv", "h2o", "a &quot;quoted&quot; one"}));
}

// Every policy, one-shot and (where it streams) replay, on a small workload: budgets ≥ n lose
// nothing, smaller ones keep what they say and lose something.
TEST(Compare, EveryPolicyEndToEnd) {
  eval::WorkloadSpec spec = eval::workload_preset("default");
  spec.n = 384;
  spec.window = 16;
  const eval::Layer layer = eval::layer_from(eval::generate(spec));
  const auto wo = layer.projection();
  Workspace ws;
  for (auto name : policy_names()) {
    // An observation window of 16 (the workload's), and CORM-style w and r of 16.
    Settings set;
    for (const auto& [key, value] : describe(make_policy(name, {.wo = &*wo})))
      if (key == "window" || key == "w" || key == "r") set.emplace_back(key, "16");
    const auto policy = make_policy(name, {.settings = set, .wo = &*wo});
    const bool free = budget_free(policy);
    const auto one = eval::run(layer, policy, free ? Budget::none() : Budget::ratio(0.25),
                               eval::Mode::one_shot, ws);
    EXPECT_EQ(one.policy, name);
    if (!free) {
      EXPECT_EQ(one.kept, 96.0) << name;
      EXPECT_GT(one.metrics.error, 0.0) << name;
      const auto all = eval::run(layer, policy, Budget::ratio(1.0), eval::Mode::one_shot, ws);
      EXPECT_EQ(all.metrics.error, 0.0) << name;
      EXPECT_NEAR(all.metrics.kept_mass, 1.0, 1e-6) << name;
    }
    if (info_of(policy).streaming) {
      const auto r = eval::run(layer, policy, free ? Budget::none() : Budget::tokens(64),
                               eval::Mode::replay, ws);
      EXPECT_GT(r.replay_mean, 0.0) << name;
      EXPECT_GE(r.replay_max, r.replay_mean) << name;
      if (!free) {
        EXPECT_EQ(r.kept, 64.0) << name;
      }
    }
  }
}

}  // namespace
}  // namespace kvevict::test
