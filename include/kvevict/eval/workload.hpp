// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Built-in workloads: one attention layer's Q/K/V/W_o, generated from a seed, with the
/// structure papers report in trained models — so policies can be compared without a GPU.
///
/// **The model.** Raw keys and queries are Gaussian noise plus a few structured components,
/// then rotated by RoPE at their positions (NeoX pairing, base 5·10^5 as Llama 3), exactly as a
/// model stores them. Each component lives in its own rotary pair, so RoPE gives it the
/// behaviour it has in real models:
/// - **attention sinks** (Xiao et al. 2023): the first `sinks` keys share a direction in the
///   lowest-frequency pair with every query, so they draw attention at any distance; their
///   values are small (`sink_value`), as observed: attending to them is a no-op.
/// - **recency** (from RoPE itself, Su et al. 2021): keys and queries share a constant vector
///   across the high-frequency pairs; after rotation q·k carries Σ cos(θ_k (p − j)), large for
///   nearby tokens and averaging out far away.
/// - **heavy hitters** (Zhang et al. 2023): a fraction of the keys carries a "topic" direction
///   that every query has in varying amounts: they collect attention from most queries.
/// - **needles** (passkey retrieval): a few keys at chosen depths carry their own direction
///   that ordinary queries ignore; "question" queries retrieve them. The question is either in
///   the observation window (`question = inside`: window-based scorers see it) or only among the
///   held-out future queries (`after`: compression happened before it was asked).
/// - **heterogeneous value norms**: value vectors scaled by a log-normal factor
///   (`value_sigma`), what CriticalKV exploits.
/// - **GQA**: `group` query heads per KV head, each with its own noise and topic weight.
///
/// The layer has n context tokens, the queries of every context position (replay; the last
/// `window` of them are the observation window of one-shot policies), `future` held-out queries
/// at positions n … n + future − 1 on which outputs are compared, and W_o.

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../error.hpp"
#include "../kernels/rope.hpp"
#include "../random.hpp"

namespace kvevict::eval {

/// Where the needles' question is asked.
enum class Question { none, inside, after };

constexpr std::string_view to_string(Question q) {
  return q == Question::none ? "none" : q == Question::inside ? "inside" : "after";
}

/// The knobs of a workload. Presets (`workload_preset`) set them by name; every one can be
/// changed on the command line with `--workload-set knob=value`.
struct WorkloadSpec {
  std::string name = "default";
  index_t n = 4096;       ///< context tokens (1K … 64K)
  index_t head_dim = 64;  ///< d
  index_t kv_heads = 2;
  index_t group = 4;    ///< query heads per KV head
  index_t window = 32;  ///< observation window: the last queries of the context
  index_t future = 16;  ///< held-out queries the outputs are compared on
  double rope_base = 5e5;
  double noise = 1.0;          ///< std of the raw key / query noise per dimension
  index_t sinks = 4;           ///< sink tokens
  double sink_strength = 8.0;  ///< the sinks' logit lift
  double sink_value = 0.05;    ///< the sinks' value scale
  double recency = 3.0;        ///< logit lift of a token at distance 0 from the query
  double heavy_fraction = 0.02;
  double heavy_strength = 5.0;  ///< mean logit lift of a heavy hitter
  index_t needles = 4;
  double needle_strength = 9.0;  ///< logit lift of a needle for its question
  Question question = Question::after;
  double value_sigma = 0.5;  ///< log-normal spread of the value norms
  std::uint64_t seed = 0;
};

/// The named presets: `default` (every structure, question after the context), `needle_inside`
/// and `needle_after` (passkey retrieval, question inside / after), `heavy_hitters`, `recency`,
/// `sinks`, `value_norms` (strong norm variation) and `uniform_values` (none), `long` (64K).
inline WorkloadSpec workload_preset(std::string_view name) {
  WorkloadSpec s;
  s.name = std::string(name);
  if (name == "default") return s;
  if (name == "needle_inside" || name == "needle_after") {
    s.question = name == "needle_inside" ? Question::inside : Question::after;
    s.heavy_fraction = 0.01;
    s.needles = 8;
    return s;
  }
  if (name == "heavy_hitters") {
    s.heavy_fraction = 0.05;
    s.heavy_strength = 6.0;
    s.needles = 0;
    s.question = Question::none;
    return s;
  }
  if (name == "recency") {
    s.recency = 5.0;
    s.heavy_fraction = 0.0;
    s.needles = 0;
    s.question = Question::none;
    return s;
  }
  if (name == "sinks") {
    s.sink_strength = 10.0;
    s.heavy_fraction = 0.0;
    s.needles = 0;
    s.question = Question::none;
    return s;
  }
  if (name == "value_norms" || name == "uniform_values") {
    s.value_sigma = name == "value_norms" ? 1.2 : 0.0;
    s.needles = 0;
    s.question = Question::none;
    return s;
  }
  if (name == "long") {
    s.n = 65536;
    return s;
  }
  kvevict::detail::fail("workload",
                        "one of default, needle_inside, needle_after, heavy_hitters, recency, "
                        "sinks, value_norms, uniform_values, long",
                        "'", std::string(name), "'");
}

/// Every preset name.
inline std::vector<std::string_view> workload_names() {
  return {"default", "needle_inside", "needle_after",   "heavy_hitters", "recency",
          "sinks",   "value_norms",   "uniform_values", "long"};
}

/// Sets one knob of `spec` from text (`--workload-set knob=value`). Throws `kvevict::error`
/// naming the knob for an unknown knob or a value that does not parse.
inline void set_knob(WorkloadSpec& spec, const std::string& key, const std::string& value) {
  using kvevict::detail::fail;
  auto real = [&](double& out) {
    std::size_t used = 0;
    try {
      out = std::stod(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != value.size() || value.empty() || !std::isfinite(out))
      fail(key, "a number", "'", value, "'");
  };
  auto integer = [&](auto& out) {
    double x = 0;
    real(x);
    if (x != std::floor(x) || x < 0 || x > 9.0e15)
      fail(key, "a non-negative integer", "'", value, "'");
    out = static_cast<std::remove_reference_t<decltype(out)>>(x);
  };
  if (key == "n")
    integer(spec.n);
  else if (key == "head_dim")
    integer(spec.head_dim);
  else if (key == "kv_heads")
    integer(spec.kv_heads);
  else if (key == "group")
    integer(spec.group);
  else if (key == "window")
    integer(spec.window);
  else if (key == "future")
    integer(spec.future);
  else if (key == "sinks")
    integer(spec.sinks);
  else if (key == "needles")
    integer(spec.needles);
  else if (key == "seed")
    integer(spec.seed);
  else if (key == "rope_base")
    real(spec.rope_base);
  else if (key == "noise")
    real(spec.noise);
  else if (key == "sink_strength")
    real(spec.sink_strength);
  else if (key == "sink_value")
    real(spec.sink_value);
  else if (key == "recency")
    real(spec.recency);
  else if (key == "heavy_fraction")
    real(spec.heavy_fraction);
  else if (key == "heavy_strength")
    real(spec.heavy_strength);
  else if (key == "needle_strength")
    real(spec.needle_strength);
  else if (key == "value_sigma")
    real(spec.value_sigma);
  else if (key == "question") {
    if (value == "none")
      spec.question = Question::none;
    else if (value == "inside")
      spec.question = Question::inside;
    else if (value == "after")
      spec.question = Question::after;
    else
      fail(key, "one of none, inside, after", "'", value, "'");
  } else {
    fail("--workload-set",
         "a knob: n, head_dim, kv_heads, group, window, future, sinks, sink_strength, "
         "sink_value, recency, heavy_fraction, heavy_strength, needles, needle_strength, "
         "question, value_sigma, rope_base, noise, seed",
         "'", key, "'");
  }
}

/// A generated (or loaded) layer: dense fp32, K, V [kv_heads][n][d], the queries of every
/// context position Q [q_heads][n][d], the held-out queries F [q_heads][future][d], W_o
/// [q_heads][d][q_heads · d]; which context tokens are needles and which future queries ask
/// for them.
struct Workload {
  WorkloadSpec spec;
  index_t q_heads = 0, hidden = 0;
  std::vector<float> keys, values, queries, future, wo;
  std::vector<index_t> needles;           ///< context positions
  std::vector<index_t> question_queries;  ///< indices into the future queries
};

namespace detail {

/// Standard normal from a uniform stream (Box–Muller; one value per call, deterministic).
inline double gaussian(RandomStream& rng) {
  const double u = rng.uniform(), v = rng.uniform();
  return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
}

/// Rotates x (d floats, NeoX pairs (k, k + d/2)) to position p, as a model's RoPE does.
inline void rope(float* x, index_t d, double base, std::int64_t p) {
  thread_local std::vector<double> freq, cs;
  kvevict::detail::rope_frequencies({.base = base}, d, freq);
  cs.resize(static_cast<std::size_t>(d));
  kvevict::detail::rope_angles(freq, static_cast<double>(p), cs.data(), cs.data() + d / 2);
  kvevict::detail::rotate_pairs(x, RopeStyle::neox, d / 2, cs.data(), cs.data() + d / 2);
}

}  // namespace detail

/// Generates the layer described by `spec`. Deterministic: the same spec (seed included) gives
/// the same arrays, bit for bit, on every platform with IEEE floats. O((n + future) · q_heads · d)
/// plus W_o (q_heads² · d²); allocates the workload.
inline Workload generate(const WorkloadSpec& spec) {
  using kvevict::detail::cat;
  using kvevict::detail::require;
  require(spec.n >= 16 && spec.n <= (index_t{1} << 24), "n", "16 <= n <= 2^24 tokens", spec.n);
  require(spec.head_dim >= 16 && spec.head_dim <= 1024 && spec.head_dim % 2 == 0, "head_dim",
          "an even head_dim in [16, 1024]", spec.head_dim);
  require(spec.kv_heads >= 1 && spec.kv_heads <= 256, "kv_heads", "1 <= kv_heads <= 256",
          spec.kv_heads);
  require(spec.group >= 1 && spec.group <= 64, "group", "1 <= group <= 64", spec.group);
  require(spec.window >= 1 && spec.window <= spec.n, "window",
          cat("1 <= window <= n (", spec.n, ")"), spec.window);
  require(spec.future >= 1 && spec.future <= spec.n, "future",
          cat("1 <= future <= n (", spec.n, ") held-out queries"), spec.future);
  {  // K, V, Q, F and W_o together: refuse what would not fit a workstation, before allocating
    const double q_heads = static_cast<double>(spec.kv_heads * spec.group),
                 d = static_cast<double>(spec.head_dim), n = static_cast<double>(spec.n);
    const double floats = 2 * static_cast<double>(spec.kv_heads) * n * d +
                          q_heads * (n + static_cast<double>(spec.future)) * d +
                          q_heads * d * q_heads * d;
    require(floats <= double(index_t{1} << 30), "n",
            "a workload of at most 2^30 floats (4 GiB) over K, V, Q, the held-out queries and "
            "W_o; lower n, head_dim, kv_heads or group",
            cat(static_cast<long long>(floats), " floats"));
  }
  require(spec.sinks >= 0 && spec.sinks < spec.n / 2, "sinks", "0 <= sinks < n / 2", spec.sinks);
  require(spec.needles >= 0 && spec.needles <= std::min<index_t>(spec.future, spec.head_dim / 8),
          "needles",
          cat("0 <= needles <= min(future, head_dim / 8) (",
              std::min<index_t>(spec.future, spec.head_dim / 8), ")"),
          spec.needles);
  require(spec.heavy_fraction >= 0 && spec.heavy_fraction < 0.5, "heavy_fraction", "[0, 0.5)",
          spec.heavy_fraction);

  Workload w;
  w.spec = spec;
  const index_t n = spec.n, d = spec.head_dim, half = d / 2, f = spec.future;
  w.q_heads = spec.kv_heads * spec.group;
  w.hidden = w.q_heads * d;
  const double root_d = std::sqrt(static_cast<double>(d));
  // Rotary pairs: the lowest frequencies carry position-invariant directions (sink, topic,
  // needles); every other pair carries a share of the recency vector. Their frequencies are
  // log-spaced, so the recency kernel Σ_k cos(θ_k Δ) counts the pairs with θ_k Δ ≲ 1: it falls
  // off with log-distance, as attention to context in trained models does.
  const index_t sink_pair = half - 1, topic_pair = half - 2, needle_pair0 = half - 3;
  const index_t structured_from = needle_pair0 - std::max<index_t>(spec.needles, 1) + 1;
  const index_t recency_pairs = structured_from;
  // A lift L in logits for a key component a and query component b in one dimension: a·b / √d.
  const double sink_q = 1.0, sink_k = spec.sink_strength * root_d / sink_q;
  const double topic_q = 1.0, topic_k = spec.heavy_strength * root_d / topic_q;
  const double needle_q = 3.0, needle_k = spec.needle_strength * root_d / needle_q;
  const double rec = std::sqrt(spec.recency * root_d / static_cast<double>(recency_pairs));

  RandomStream layout(spec.seed, 0x5eed, 0);
  // Needle positions: evenly spread over the middle of the context, away from the window.
  for (index_t i = 0; i < spec.needles; ++i)
    w.needles.push_back(spec.sinks +
                        (n - spec.window - spec.sinks) * (2 * i + 1) / (2 * spec.needles));
  std::vector<std::uint8_t> heavy(static_cast<std::size_t>(n), 0),
      needle_of(static_cast<std::size_t>(n), 0);
  for (index_t j = spec.sinks; j < n; ++j)
    heavy[static_cast<std::size_t>(j)] = layout.uniform() < spec.heavy_fraction;
  for (index_t i = 0; i < spec.needles; ++i) {
    needle_of[static_cast<std::size_t>(w.needles[static_cast<std::size_t>(i)])] =
        static_cast<std::uint8_t>(i + 1);
    heavy[static_cast<std::size_t>(w.needles[static_cast<std::size_t>(i)])] = 0;
  }
  for (index_t i = 0; i < spec.needles; ++i) w.question_queries.push_back(i);

  // Needle i's direction: the first dimension of pair needle_pair0 − i.
  auto needle_dim = [&](index_t i) { return needle_pair0 - i; };

  w.keys.assign(static_cast<std::size_t>(spec.kv_heads * n * d), 0.0f);
  w.values.assign(w.keys.size(), 0.0f);
  for (index_t h = 0; h < spec.kv_heads; ++h) {
    RandomStream rng(spec.seed, 1, static_cast<std::uint64_t>(h));
    for (index_t j = 0; j < n; ++j) {
      float* k = w.keys.data() + (h * n + j) * d;
      float* v = w.values.data() + (h * n + j) * d;
      for (index_t e = 0; e < d; ++e) k[e] = static_cast<float>(spec.noise * detail::gaussian(rng));
      for (index_t e = 0; e < recency_pairs; ++e) k[e] += static_cast<float>(rec);
      if (j < spec.sinks) k[sink_pair] += static_cast<float>(sink_k);
      if (heavy[static_cast<std::size_t>(j)]) k[topic_pair] += static_cast<float>(topic_k);
      if (const index_t id = needle_of[static_cast<std::size_t>(j)]; id > 0)
        k[needle_dim(id - 1)] += static_cast<float>(needle_k);
      detail::rope(k, d, spec.rope_base, j);
      double scale = std::exp(spec.value_sigma * detail::gaussian(rng) -
                              0.5 * spec.value_sigma * spec.value_sigma);
      if (j < spec.sinks) scale *= spec.sink_value;
      for (index_t e = 0; e < d; ++e) v[e] = static_cast<float>(scale * detail::gaussian(rng));
    }
  }

  // A query at position p: noise + recency vector + sink direction + a topic weight; a question
  // for needle i adds that needle's direction.
  // Queries carry no noise along the structured directions (both dimensions of the sink, topic
  // and needle pairs): a key's large structured component times query noise would otherwise
  // give it attention of random size — a needle would be found by ordinary queries.
  auto make_query = [&](float* q, RandomStream& rng, std::int64_t p, index_t needle) {
    for (index_t e = 0; e < d; ++e) {
      const double z = spec.noise * detail::gaussian(rng);
      const bool structured = e % half >= structured_from;
      q[e] = structured ? 0.0f : static_cast<float>(z);
    }
    for (index_t e = 0; e < recency_pairs; ++e) q[e] += static_cast<float>(rec);
    q[sink_pair] += static_cast<float>(sink_q);
    q[topic_pair] += static_cast<float>(topic_q * (0.5 + rng.uniform()));
    if (needle >= 0) q[needle_dim(needle)] += static_cast<float>(needle_q);
    detail::rope(q, d, spec.rope_base, p);
  };
  w.queries.assign(static_cast<std::size_t>(w.q_heads * n * d), 0.0f);
  w.future.assign(static_cast<std::size_t>(w.q_heads * f * d), 0.0f);
  for (index_t h = 0; h < w.q_heads; ++h) {
    RandomStream rng(spec.seed, 2, static_cast<std::uint64_t>(h));
    for (index_t p = 0; p < n; ++p) {
      // Question inside: the window's last queries ask for the needles, one each.
      const index_t ask =
          spec.question == Question::inside && p >= n - spec.needles ? p - (n - spec.needles) : -1;
      make_query(w.queries.data() + (h * n + p) * d, rng, p, ask);
    }
    for (index_t i = 0; i < f; ++i)
      make_query(w.future.data() + (h * f + i) * d, rng, n + i, i < spec.needles ? i : -1);
  }

  w.wo.resize(static_cast<std::size_t>(w.q_heads * d * w.hidden));
  RandomStream wrng(spec.seed, 3, 0);
  const double wscale = 1.0 / std::sqrt(static_cast<double>(w.hidden));
  for (float& x : w.wo) x = static_cast<float>(wscale * detail::gaussian(wrng));
  return w;
}

}  // namespace kvevict::eval
