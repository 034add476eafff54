// Threads and determinism: const policies shared by threads, per-sequence state per thread, and
// every policy giving identical results across runs, dirty workspaces and thread counts. Run
// under ThreadSanitizer by the `test-tsan` preset.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/registry.hpp>

#include <thread>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

constexpr index_t kv_heads = 2, q_heads = 4, n = 160, d = 16, w = 8, hidden = 32;

/// One sequence of one layer: its own cache memory (layouts vary), window queries and W_o.
struct Sequence {
  OwnedCache<float> cache;
  std::vector<float> q, wo;
  std::vector<float> stream_q;  ///< one query per position, for the streaming runs
  index_t layer;

  explicit Sequence(index_t i)
      : cache(make_cache<float>(all_layouts[static_cast<std::size_t>(i) % std::size(all_layouts)],
                                kv_heads, n, d, d, 100 + static_cast<std::uint64_t>(i))),
        layer(i % 3) {
    std::mt19937_64 rng(200 + static_cast<std::uint64_t>(i));
    std::normal_distribution<float> normal;
    q.resize(static_cast<std::size_t>(q_heads * w * d));
    wo.resize(static_cast<std::size_t>(q_heads * d * hidden));
    stream_q.resize(static_cast<std::size_t>(q_heads * n * d));
    for (float& x : q) x = 2.0f * normal(rng);
    for (float& x : wo) x = normal(rng);
    for (float& x : stream_q) x = 2.0f * normal(rng);
  }
  KVCache<float> kv() { return cache.kv().with_layer(layer); }
  QueryWindow<float> queries() const { return {q.data(), q_heads, w, d}; }
  OutputProjection projection() const {
    return OutputProjection::dense(wo.data(), q_heads, d, hidden);
  }
};

/// Every selection of every head, flattened (with the per-head sizes), for comparison.
std::vector<std::int64_t> flatten(const Selection& s) {
  std::vector<std::int64_t> out{s.kv_heads(), s.tokens(), s.shared()};
  for (index_t h = 0; h < s.kv_heads(); ++h) {
    out.push_back(-1 - s.size(h));
    out.insert(out.end(), s.kept(h).begin(), s.kept(h).end());
  }
  return out;
}

/// The selections of `policies` (one per registry name, built once, shared read-only) on every
/// sequence, computed by `threads` threads that split the sequences between them. Each thread
/// has its own Workspace and Selection; `dirty` fills each workspace with NaN first so that a
/// read of scratch memory the kernels did not write would change the results.
std::vector<std::vector<std::int64_t>> select_all(std::vector<Sequence>& seqs,
                                                  const std::vector<AnyPolicy>& policies,
                                                  const Budget& budget, int threads, bool dirty) {
  std::vector<std::vector<std::int64_t>> out(seqs.size() * policies.size());
  auto work = [&](int t) {
    Workspace ws;
    if (dirty) {
      Workspace::Frame frame(ws);
      const auto junk = ws.take<float>(1 << 18);
      std::fill(junk.begin(), junk.end(), std::numeric_limits<float>::quiet_NaN());
    }
    Selection sel;
    for (std::size_t i = static_cast<std::size_t>(t); i < seqs.size();
         i += static_cast<std::size_t>(threads))
      for (std::size_t p = 0; p < policies.size(); ++p) {
        const Budget b = budget_free(policies[p]) ? Budget::none() : budget;
        kvevict::select(policies[p], seqs[i].kv(), seqs[i].queries(), b, sel, ws);
        out[i * policies.size() + p] = flatten(sel);
      }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  return out;
}

/// Policies for sequence-independent use: W_o differs per sequence only through the view, so
/// CriticalKV is built over sequence 0's projection and the other sequences share it (what an
/// engine does: one W_o per layer).
std::vector<AnyPolicy> all_policies(const OutputProjection& wo, std::uint64_t seed) {
  std::vector<AnyPolicy> out;
  for (auto name : policy_names())
    out.push_back(make_policy(name, {.settings = small_settings(name), .seed = seed, .wo = &wo}));
  return out;
}

std::vector<Sequence> make_sequences(index_t count) {
  std::vector<Sequence> seqs;
  for (index_t i = 0; i < count; ++i) seqs.emplace_back(i);
  return seqs;
}

/// Whether the policy called `name` draws random numbers: it has a `seed` parameter.
bool draws_random(std::string_view name) {
  bool out = false;
  for_each_policy([&]<class P>() {
    if (P::name != name) return;
    for (const auto& f : P::parameters()) out = out || f.name == "seed";
  });
  return out;
}

TEST(Determinism, EveryPolicySameInputsSameSeedSameSelection) {
  auto seqs = make_sequences(7);
  const auto wo = seqs[0].projection();
  const auto policies = all_policies(wo, 11);
  const auto first = select_all(seqs, policies, Budget::ratio(0.25), 1, false);
  // Fresh policy objects, a workspace full of NaN: identical.
  EXPECT_EQ(select_all(seqs, all_policies(wo, 11), Budget::ratio(0.25), 1, true), first);
  // The seed matters where a policy draws random numbers, and only there.
  const auto reseeded = select_all(seqs, all_policies(wo, 12), Budget::ratio(0.25), 1, false);
  const auto names = policy_names();
  for (std::size_t p = 0; p < names.size(); ++p) {
    bool differs = false;
    for (std::size_t i = 0; i < seqs.size(); ++i)
      differs |= reseeded[i * names.size() + p] != first[i * names.size() + p];
    EXPECT_EQ(differs, draws_random(names[p])) << names[p];
  }
  // The layer index seeds random policies too: the same memory as another layer differs.
  for (auto& s : seqs) s.layer += 1;
  const auto relayered = select_all(seqs, policies, Budget::ratio(0.25), 1, false);
  for (std::size_t p = 0; p < names.size(); ++p)
    if (draws_random(names[p])) {
      EXPECT_NE(relayered[p], first[p]) << names[p];
    }
}

TEST(Threads, ConstPoliciesSharedAcrossThreadsGiveTheSerialResult) {
  auto seqs = make_sequences(8);
  const auto wo = seqs[0].projection();
  const auto policies = all_policies(wo, 5);  // shared by every thread
  const auto serial = select_all(seqs, policies, Budget::ratio(0.3), 1, false);
  EXPECT_EQ(select_all(seqs, policies, Budget::ratio(0.3), 2, true), serial);
  EXPECT_EQ(select_all(seqs, policies, Budget::ratio(0.3), 4, false), serial);
}

/// Replays every position of `seq` through a streaming policy and a StreamDriver over the
/// sequence's own slot memory; returns every step's evictions and the final positions.
template <class P>
std::vector<std::int64_t> stream(const P& policy, StreamConfig config, Sequence& seq) {
  auto sequence = policy.start(config);
  auto slots = make_cache<float>(Layout::paged_nhd, kv_heads, sequence.slots(), d, d, 1);
  StreamDriver driver(sequence, slots.kv());
  Workspace ws;
  std::vector<std::int64_t> log;
  std::vector<float> k(static_cast<std::size_t>(kv_heads * d)), v(k.size());
  for (index_t t = 0; t < n; ++t) {
    const KVCache<float> src = seq.kv();
    for (index_t h = 0; h < kv_heads; ++h) {
      std::copy_n(src.key(h, t).data(), d, k.data() + h * d);
      std::copy_n(src.value(h, t).data(), d, v.data() + h * d);
    }
    driver.append(t, k, v);
    const QueryWindow<float> q(seq.stream_q.data() + t * d, q_heads, 1, d, n * d, d);
    const Evictions e = driver.observe(q, ws);
    for (index_t h = 0; h < kv_heads; ++h) {
      log.push_back(-1);
      log.insert(log.end(), e.of(h).begin(), e.of(h).end());
    }
  }
  for (index_t h = 0; h < kv_heads; ++h)
    for (index_t s = 0; s < sequence.slots(); ++s) log.push_back(sequence.position(h, s));
  return log;
}

std::vector<std::vector<std::int64_t>> stream_all(std::vector<Sequence>& seqs, int threads) {
  constexpr int kinds = 6;
  std::vector<std::vector<std::int64_t>> out(seqs.size() * kinds);
  auto work = [&](int t) {
    for (std::size_t i = static_cast<std::size_t>(t); i < seqs.size();
         i += static_cast<std::size_t>(threads)) {
      const StreamConfig c{.kv_heads = kv_heads, .q_heads = q_heads, .budget = 36};
      auto* o = &out[i * kinds];
      o[0] = stream(H2O({.recent = 8}), c, seqs[i]);
      o[1] = stream(TOVA(), c, seqs[i]);
      o[2] = stream(StreamingLLM({.sinks = 4}), c, seqs[i]);
      o[3] = stream(RandomEviction({.sinks = 2, .seed = i}), c, seqs[i]);
      o[4] =
          stream(CORM({.w = 8, .r = 8}),
                 {.kv_heads = kv_heads, .q_heads = q_heads, .budget = 0, .capacity = 96}, seqs[i]);
      o[5] = stream(Cascade({.sinks = 4, .cascades = 2}), c, seqs[i]);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  return out;
}

TEST(Threads, StreamingPoliciesOnePerSequenceAcrossThreads) {
  auto seqs = make_sequences(4);
  const auto serial = stream_all(seqs, 1);
  EXPECT_EQ(stream_all(seqs, 2), serial);
  EXPECT_EQ(stream_all(seqs, 4), serial);
  EXPECT_EQ(stream_all(seqs, 1), serial);  // and across runs
}

TEST(Threads, CompactionOfDifferentSequencesAtOnce) {
  // Two threads compact different sequences (each in its own memory) at once.
  auto seqs = make_sequences(6);
  std::vector<std::vector<std::uint32_t>> expected(seqs.size());
  std::vector<Selection> chosen(seqs.size());
  Workspace ws;
  const SnapKV snap({.window = w});
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    snap.select(seqs[i].kv(), seqs[i].queries(), Budget::ratio(0.4), chosen[i], ws);
    for (index_t h = 0; h < kv_heads; ++h)
      for (token_t t : chosen[i].kept(h)) {
        for (float x : seqs[i].kv().key(h, t)) expected[i].push_back(bits(x));
        for (float x : seqs[i].kv().value(h, t)) expected[i].push_back(bits(x));
      }
  }
  auto work = [&](std::size_t t) {
    for (std::size_t i = t; i < seqs.size(); i += 2) compact(seqs[i].kv(), chosen[i]);
  };
  std::thread other(work, 1);
  work(0);
  other.join();
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    std::vector<std::uint32_t> got;
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t j = 0; j < chosen[i].size(h); ++j) {
        for (float x : seqs[i].kv().key(h, j)) got.push_back(bits(x));
        for (float x : seqs[i].kv().value(h, j)) got.push_back(bits(x));
      }
    EXPECT_EQ(got, expected[i]) << i;
  }
}

}  // namespace
}  // namespace kvevict::test
