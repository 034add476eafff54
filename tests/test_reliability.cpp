// A failed call changes nothing (issue 22): every mutating entry point of the streaming
// policies, compaction and RoPE shifts checks all it can fail on before it changes state.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/kvevict.hpp>
#include <kvevict/registry.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

/// Everything a streaming policy exposes about its slots.
template <class P>
std::vector<std::int64_t> snapshot(const P& p, index_t kv_heads) {
  std::vector<std::int64_t> out;
  for (index_t h = 0; h < kv_heads; ++h) {
    out.push_back(p.size(h));
    for (index_t s = 0; s < p.slots(); ++s) out.push_back(p.position(h, s));
  }
  return out;
}

template <class P>
std::vector<std::vector<token_t>> evicted(const Evictions& e, index_t kv_heads) {
  std::vector<std::vector<token_t>> out;
  for (index_t h = 0; h < kv_heads; ++h) out.emplace_back(e.of(h).begin(), e.of(h).end());
  return out;
}

/// Rows of probabilities over each head's live slots, from `rng`.
template <class P>
std::vector<float> rows_for(const P& p, index_t q_heads, index_t kv_heads, std::mt19937& rng) {
  std::vector<float> rows(static_cast<std::size_t>(q_heads * p.slots()), 0.0f);
  std::uniform_real_distribution<float> u(0.01f, 1.0f);
  for (index_t q = 0; q < q_heads; ++q) {
    const index_t h = q / (q_heads / kv_heads);
    float total = 0;
    for (index_t s = 0; s < p.slots(); ++s)
      if (p.position(h, s) >= 0)
        total += rows[static_cast<std::size_t>(q * p.slots() + s)] = u(rng);
    for (index_t s = 0; s < p.slots(); ++s)
      rows[static_cast<std::size_t>(q * p.slots() + s)] /= total;
  }
  return rows;
}

// The input the 15-minute fuzz run found (shared/repro, now in fuzz/corpus/stream): CORM, two KV
// heads with their own sets. Head 0 evicted a token that head 1 kept, so head 0 had a free slot
// where head 1 had none; a second append without observe took head 0's slot before head 1
// threw, and the next observe evicted differently from a twin that never saw the failed call.
TEST(Issue22, CormAppendThatFailsForOneHeadTakesNoSlotInAnother) {
  auto corm = CORM({.w = 1, .r = 0}).start({.kv_heads = 2, .q_heads = 2, .capacity = 3});
  corm.append(0);
  std::vector<float> rows{1, 0, 0, 1, 0, 0};  // [q_heads][slots]: slot 0 holds position 0
  corm.observe({rows.data(), 2, 3, 3});
  const token_t second = corm.append(1)[0];
  rows = {0, 0, 0, 0, 0, 0};
  rows[0] = 0.9f, rows[static_cast<std::size_t>(second)] = 0.1f;      // head 0: position 1 minor
  rows[3] = 0.5f, rows[static_cast<std::size_t>(3 + second)] = 0.5f;  // head 1: both important
  const auto ev = corm.observe({rows.data(), 2, 3, 3});
  ASSERT_EQ(ev.of(0).size(), 1u);  // head 0 evicted position 1 …
  ASSERT_EQ(ev.of(1).size(), 0u);  // … head 1 kept it
  corm.append(2);                  // head 0: 2 of 3 live, head 1: 3 of 3
  ASSERT_EQ(corm.size(0), 2);
  ASSERT_EQ(corm.size(1), 3);
  auto twin = corm;  // an independent copy of the sequence
  const auto before = snapshot(corm, 2);
  EXPECT_THROW(
      {
        try {
          corm.append(3);
        } catch (const kvevict::error& e) {
          EXPECT_STREQ(e.what(),
                       "append: expected a free slot (call observe after every append), got all 3 "
                       "slots live in stored head 1");
          throw;
        }
      },
      kvevict::error);
  EXPECT_EQ(snapshot(corm, 2), before);  // head 0 did not take its free slot
  std::vector<float> r2(6, 0.0f);
  for (index_t h = 0; h < 2; ++h)
    for (index_t s = 0; s < 3; ++s)
      if (corm.position(h, s) >= 0) r2[static_cast<std::size_t>(h * 3 + s)] = 1.0f / 3;
  EXPECT_EQ(evicted<CORM>(corm.observe({r2.data(), 2, 3, 3}), 2),
            evicted<CORM>(twin.observe({r2.data(), 2, 3, 3}), 2));
  EXPECT_EQ(snapshot(corm, 2), snapshot(twin, 2));
}

TEST(Issue22, ReproducerFromTheFuzzCampaignIsInTheSeedCorpus) {
  std::ifstream in(KVEVICT_SOURCE_DIR "/fuzz/corpus/stream/issue22-corm-failed-append",
                   std::ios::binary);
  ASSERT_TRUE(in.good()) << "the regression input belongs to the fuzz seed corpus";
  in.seekg(0, std::ios::end);
  EXPECT_EQ(in.tellg(), 848);
}

TEST(Issue22, SlotTableTakesForEveryHeadOrNone) {
  detail::SlotTable table;
  table.start(3, 2);
  std::vector<token_t> out(3);
  table.take_all(0, out);
  table.take_all(1, out);  // every head full
  table.release(0, out[0]);
  table.release(2, out[2]);  // heads 0 and 2 have a free slot, head 1 none
  std::vector<std::int64_t> before;
  for (index_t h = 0; h < 3; ++h)
    for (index_t s = 0; s < 2; ++s) before.push_back(table.position(h, s));
  EXPECT_THROW(table.take_all(2, out), kvevict::error);
  std::vector<std::int64_t> after;
  for (index_t h = 0; h < 3; ++h)
    for (index_t s = 0; s < 2; ++s) after.push_back(table.position(h, s));
  EXPECT_EQ(after, before);
  EXPECT_EQ(table.size(0), 1);
  EXPECT_EQ(table.size(1), 2);
  EXPECT_EQ(table.size(2), 1);
  EXPECT_EQ(table.last_position(), 1);
  EXPECT_THROW(table.take_all(1, out), kvevict::error);  // not after the previous position
}

/// Every streaming policy of the registry, per head and shared: a sequence driven through good
/// calls interleaved with failing ones (a repeated position, an append with no free slot, rows
/// with NaN, a wrong shape, a restart with a bad config) ends exactly where a twin that only got
/// the good calls ends, step by step.
TEST(Issue22, EveryStreamingPolicyIgnoresItsFailedCalls) {
  int checked = 0;
  for_each_policy([&]<class P>() {
    if constexpr (P::info.streaming) {
      static_assert(StreamingPolicy<P>);
      for (const bool shared : {false, true}) {
        const auto any = make_policy(
            P::name, {.settings = small_settings<P>(),
                      .seed = 7,
                      .granularity = shared ? Granularity::shared : Granularity::per_head});
        const P& p = *any.template target<P>();
        const bool free = budget_free(any);
        const StreamConfig config{
            .kv_heads = 2, .q_heads = 4, .budget = free ? 0 : 12, .capacity = free ? 16 : 0};
        auto policy = p.start(config);
        auto twin = policy;
        std::mt19937 rng(11);
        std::int64_t pos = 0;
        for (int step = 0; step < 60; ++step, ++pos) {
          SCOPED_TRACE(std::string(P::name) + (shared ? " shared" : " per head") + ", step " +
                       std::to_string(step));
          policy.append(pos);
          twin.append(pos);
          const auto before = snapshot(policy, 2);
          // failing calls: none may change anything
          EXPECT_THROW(policy.append(pos), kvevict::error);      // the same position again
          EXPECT_THROW(policy.append(pos - 1), kvevict::error);  // an earlier one
          if (policy.size(0) == policy.slots()) {
            EXPECT_THROW(policy.append(pos + 1), kvevict::error);  // no free slot left
          }
          // restarts that fail, at the first check or (sinks, cascades, r) at a later one
          StreamConfig bad[3] = {config, config, config};
          bad[0].q_heads = 3;
          (free ? bad[1].capacity : bad[1].budget) = 3;
          bad[2].capacity = free ? 0 : 2;
          int refused = 0;
          for (const StreamConfig& b : bad) {
            const P probe = twin.policy();
            try {
              probe.start(b);
            } catch (const kvevict::error&) {
              ++refused;
              EXPECT_THROW(policy.policy().start(b), kvevict::error);
            }
          }
          EXPECT_GE(refused, 2);  // bad[1] is accepted where nothing is protected
          auto rows = rows_for(policy, 4, 2, rng);
          if constexpr ((P::info.reads & reads_attention_rows) != 0) {  // they read the rows
            auto nan = rows;
            for (index_t s = 0; s < policy.slots(); ++s) {
              if (policy.position(1, s) >= 0)
                nan[static_cast<std::size_t>(3 * policy.slots() + s)] = std::nanf("");
            }
            EXPECT_THROW(policy.observe({nan.data(), 4, policy.slots(), policy.slots()}),
                         kvevict::error);
            EXPECT_THROW(policy.observe({rows.data(), 3, policy.slots(), policy.slots()}),
                         kvevict::error);
          }
          EXPECT_EQ(snapshot(policy, 2), before);
          const AttentionRows r{rows.data(), 4, policy.slots(), policy.slots()};
          ASSERT_EQ(evicted<P>(policy.observe(r), 2), evicted<P>(twin.observe(r), 2));
          ASSERT_EQ(snapshot(policy, 2), snapshot(twin, 2));
          if (free && step % 7 == 3) ++pos;  // gaps in positions are fine
        }
        ++checked;
      }
    }
  });
  EXPECT_EQ(checked, 12);  // six streaming policies, per head and shared
}

TEST(Issue22, RopeShiftOfAMalformedCompactionWritesNothing) {
  auto c = make_cache<float>(Layout::hnd, 2, 8, 4, 4, 1);
  const auto kbefore = c.kmem;
  Compaction bad;
  bad.lengths = {8, 9};  // head 1 claims more tokens than the view holds
  bad.offsets = {0, 8, 17};
  bad.positions.assign(17, 0);
  EXPECT_THROW(rope_shift(c.kv(), bad, Rope{}), kvevict::error);
  bad.lengths = {8, 8};
  bad.offsets = {0, 8, 12};  // offsets disagree with the lengths
  bad.positions.assign(12, 0);
  EXPECT_THROW(rope_shift(c.kv(), bad, Rope{}), kvevict::error);
  EXPECT_EQ(c.kmem, kbefore);
}

// Cascade's prefill runs chunk after chunk; a bad value in a late chunk used to surface after the
// early chunks had been inserted. Everything that can fail is now checked first.
TEST(Issue22, CascadePrefillThatFailsLeavesSlotsAndStateAsTheyWere) {
  const index_t kv = 2, qh = 4, n = 64, d = 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> k(static_cast<std::size_t>(kv * n * d)), v(k.size()),
      q(static_cast<std::size_t>(qh * n * d));
  for (auto* vec : {&k, &v, &q})
    for (float& x : *vec) x = normal(rng);
  auto cascade = Cascade({.sinks = 2, .cascades = 2, .stride = 16})
                     .start({.kv_heads = kv, .q_heads = qh, .budget = 2 + 2 * 8});
  const index_t slots = cascade.slots();
  std::vector<float> ks(static_cast<std::size_t>(kv * slots * d)), vs(ks.size());
  const KVCache<float> memory(Storage<float>::hnd(ks.data(), slots, d),
                              Storage<float>::hnd(vs.data(), slots, d), {kv, slots, d});
  const KVCache<float> prompt(Storage<float>::hnd(k.data(), n, d),
                              Storage<float>::hnd(v.data(), n, d), {kv, n, d});
  Workspace ws;
  cascade.prefill(memory, prompt.with_tokens(20), QueryWindow<float>(q.data(), qh, 20, d), 0, ws);
  const auto state = snapshot(cascade, kv);
  const auto kmem = ks, vmem = vs;
  const auto twin = cascade;
  // the rest of the prompt, with a NaN in a key of its third chunk (token 20 + 40)
  std::vector<float> k2(k.begin(), k.end()), q2(q.begin(), q.end());
  const auto rest = [&](std::vector<float>& kk) {
    return KVCache<float>(Storage<float>::hnd(kk.data() + 20 * d, n, d),
                          Storage<float>::hnd(v.data() + 20 * d, n, d), {kv, n - 20, d});
  };
  const QueryWindow<float> rest_q(q2.data() + 20 * d, qh, n - 20, d, n * d, d);
  k2[static_cast<std::size_t>((1 * n + 60) * d + 3)] = std::nanf("");
  EXPECT_THROW(cascade.prefill(memory, rest(k2), rest_q, 20, ws), kvevict::error);
  EXPECT_THROW(cascade.prefill(memory, rest(k), rest_q, 19, ws), kvevict::error);  // position
  q2[static_cast<std::size_t>((2 * n + 50) * d)] = 3e38f;  // finite, but its logits overflow
  EXPECT_THROW(cascade.prefill(memory, rest(k), rest_q, 20, ws), kvevict::error);
  EXPECT_EQ(snapshot(cascade, kv), state);
  EXPECT_EQ(ks, kmem);
  EXPECT_EQ(vs, vmem);
  for (index_t h = 0; h < kv; ++h)
    for (index_t s = 0; s < slots; ++s)
      EXPECT_EQ(cascade.state().score_of(h, s), twin.state().score_of(h, s));
}

}  // namespace
}  // namespace kvevict::test
