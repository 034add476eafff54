// kvevict microbenchmarks. Ratios, not times: every figure is compared with a ceiling measured in
// the same run (BM_Ceiling_Sgemm1024 for FLOP/s, BM_Ceiling_Memcpy for bytes/s).
// SPDX-License-Identifier: Apache-2.0
#include <benchmark/benchmark.h>

#include <kvevict/eval/stored.hpp>
#include <kvevict/kvevict.hpp>
#include <kvevict/periodic.hpp>

#include <Eigen/Dense>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

namespace {

using kvevict::index_t;

// ---- ceilings ----------------------------------------------------------------------------------

/// Single-threaded Eigen sgemm, 1024³: the machine's practical FLOP/s ceiling for our kernels.
void BM_Ceiling_Sgemm1024(benchmark::State& state) {
  const index_t n = 1024;
  const Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n);
  Eigen::MatrixXf c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] =
      benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Ceiling_Sgemm1024)->Unit(benchmark::kMillisecond);

/// memcpy of 256 MiB: the copy-bandwidth ceiling for compaction.
void BM_Ceiling_Memcpy(benchmark::State& state) {
  const std::size_t bytes = 256u << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(bytes));
}
BENCHMARK(BM_Ceiling_Memcpy)->Unit(benchmark::kMillisecond);

// ---- scoring: the window attention every attention-based policy starts from ---------------------

constexpr index_t kQHeads = 32, kKVHeads = 8, kDim = 128, kWindow = 32;

/// A cache of n tokens (32 query / 8 KV heads, d = 128, HND) and a window of 32 queries,
/// filled with N(0, 1) values.
template <class T>
struct Problem {
  std::vector<T> k, v, q;
  std::optional<kvevict::KVCache<T>> kv;
  std::optional<kvevict::QueryWindow<T>> window;
  explicit Problem(index_t n) {
    kvevict::RandomStream rng(7, 0, 0);  // uniform in (−1, 1): fast to generate, like N(0, 0.6)
    k.resize(static_cast<std::size_t>(kKVHeads * n * kDim));
    v.resize(k.size());
    q.resize(static_cast<std::size_t>(kQHeads * kWindow * kDim));
    for (auto* vec : {&k, &v, &q})
      for (T& x : *vec) x = kvevict::from_float<T>(static_cast<float>(2.0 * rng.uniform() - 1.0));
    kv.emplace(kvevict::Storage<T>::hnd(k.data(), n, kDim),
               kvevict::Storage<T>::hnd(v.data(), n, kDim), kvevict::Shape{kKVHeads, n, kDim});
    window.emplace(q.data(), kQHeads, kWindow, kDim);
  }
};

/// FLOPs of scoring a w-query window over n keys: 2·w·n·d per query head.
double score_flops(index_t n) {
  return 2.0 * kWindow * static_cast<double>(n) * kDim * kQHeads;
}

template <class T>
void score_window(benchmark::State& state) {
  const index_t n = state.range(0);
  Problem<T> p(n);
  std::vector<float> out(static_cast<std::size_t>(kQHeads * n));
  kvevict::Workspace ws;
  for (auto _ : state) {
    kvevict::kernels::window_attention(*p.kv, *p.window, {.reduce = kvevict::WindowReduce::mean},
                                       out, ws);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(score_flops(n), benchmark::Counter::kIsIterationInvariantRate);
}

/// Window attention over fp32 storage: target ≥ 50% of BM_Ceiling_Sgemm1024's FLOPS.
void BM_Score_Window(benchmark::State& state) {
  score_window<float>(state);
}
BENCHMARK(BM_Score_Window)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond);

/// The same over fp16 storage (converted block by block to fp32).
void BM_Score_Window_F16(benchmark::State& state) {
  score_window<Eigen::half>(state);
}
BENCHMARK(BM_Score_Window_F16)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond);

/// BM_Score_Window with the engine's threads: a `ThreadExecutor` of 2 workers on the workspace
/// (KV heads as tasks). Wall time; target (issue 21): ≥ 1.8× faster than BM_Score_Window.
void BM_Score_Window_2Threads(benchmark::State& state) {
  const index_t n = state.range(0);
  Problem<float> p(n);
  std::vector<float> out(static_cast<std::size_t>(kQHeads * n));
  kvevict::Workspace ws;
  const kvevict::ThreadExecutor executor(2);
  ws.set_executor(&executor);
  for (auto _ : state) {
    kvevict::kernels::window_attention(*p.kv, *p.window, {.reduce = kvevict::WindowReduce::mean},
                                       out, ws);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(score_flops(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Score_Window_2Threads)->Arg(32768)->Unit(benchmark::kMillisecond)->UseRealTime();

/// The same over a quantized cache: Problem<float>'s keys and values stored as an engine stores
/// them (eval::Stored: ggml blocks, fp8 with a per-tensor scale, int8 with per-token scales),
/// dequantized block by block into the same GEMM. Target (issue 19): q8_0 and fp8 ≥ 50% of
/// BM_Ceiling_Sgemm1024.
template <class T>
void score_window_stored(benchmark::State& state) {
  const index_t n = state.range(0);
  Problem<float> p(n);
  const kvevict::eval::Stored<T> stored(p.k.data(), p.v.data(), kKVHeads, n, kDim, kDim);
  const auto kv = stored.view();
  std::vector<float> out(static_cast<std::size_t>(kQHeads * n));
  kvevict::Workspace ws;
  for (auto _ : state) {
    kvevict::kernels::window_attention(kv, *p.window, {.reduce = kvevict::WindowReduce::mean}, out,
                                       ws);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(score_flops(n), benchmark::Counter::kIsIterationInvariantRate);
}
void BM_Score_Window_Q8_0(benchmark::State& state) {
  score_window_stored<kvevict::q8_0>(state);
}
void BM_Score_Window_Q4_0(benchmark::State& state) {
  score_window_stored<kvevict::q4_0>(state);
}
void BM_Score_Window_FP8(benchmark::State& state) {
  score_window_stored<kvevict::fp8_e4m3>(state);
}
void BM_Score_Window_Int8(benchmark::State& state) {
  score_window_stored<kvevict::int8>(state);
}
BENCHMARK(BM_Score_Window_Q8_0)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Score_Window_Q4_0)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Score_Window_FP8)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Score_Window_Int8)->Arg(32768)->Unit(benchmark::kMillisecond);

/// What SnapKV does after scoring: pooling (kernel 7), the GQA mean, and top-k per KV head
/// (budget n/5). Target: ≤ 15% of BM_Score_Window at the same n.
void BM_SnapKV_PoolSelect(benchmark::State& state) {
  const index_t n = state.range(0), prefix = n - kWindow, budget = n / 5;
  std::vector<float> attention(static_cast<std::size_t>(kQHeads * n));
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> uniform;
  for (float& x : attention) x = uniform(rng);
  std::vector<float> pooled(static_cast<std::size_t>(kQHeads * prefix)),
      reduced(static_cast<std::size_t>(kKVHeads * prefix));
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n));
  kvevict::Selection sel;
  kvevict::Workspace ws;
  for (auto _ : state) {
    sel.reset(kKVHeads, n, false);
    for (index_t h = 0; h < kQHeads; ++h)
      kvevict::kernels::pool1d(
          std::span<const float>(attention).subspan(static_cast<std::size_t>(h * n),
                                                    static_cast<std::size_t>(prefix)),
          std::span<float>(pooled).subspan(static_cast<std::size_t>(h * prefix),
                                           static_cast<std::size_t>(prefix)),
          7, kvevict::Pool::max, ws);
    kvevict::kernels::reduce_groups(pooled, kQHeads, prefix, kKVHeads, kvevict::GroupReduce::mean,
                                    false, reduced);
    for (index_t h = 0; h < kKVHeads; ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      kvevict::kernels::keep_range(keep, prefix, n);
      kvevict::kernels::top_k(
          std::span<const float>(reduced).subspan(static_cast<std::size_t>(h * prefix),
                                                  static_cast<std::size_t>(prefix)),
          0, prefix, budget - kWindow, keep, ws);
      kvevict::kernels::add_head_from_mask(sel, keep);
    }
    benchmark::DoNotOptimize(sel.kept(0).data());
  }
}
BENCHMARK(BM_SnapKV_PoolSelect)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond);

/// SnapKV end to end (scoring + pooling + selection), fp16 storage, budget 20%.
void BM_Select_SnapKV_F16(benchmark::State& state) {
  const index_t n = state.range(0);
  Problem<Eigen::half> p(n);
  kvevict::Selection sel;
  kvevict::Workspace ws;
  const kvevict::SnapKV policy;
  for (auto _ : state) {
    policy.select(*p.kv, *p.window, kvevict::Budget::ratio(0.2), sel, ws);
    benchmark::DoNotOptimize(sel.kept(0).data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(score_flops(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Select_SnapKV_F16)->Arg(32768)->Unit(benchmark::kMillisecond);

// ---- NACL: scoring vs selection at P = 1% proxies
// ------------------------------------------------

/// A cache of n tokens with a window of n / 100 proxy queries (fp16 storage).
struct NACLProblem {
  std::vector<Eigen::half> k, v, q;
  std::optional<kvevict::KVCache<Eigen::half>> kv;
  std::optional<kvevict::QueryWindow<Eigen::half>> proxies;
  explicit NACLProblem(index_t n) {
    const index_t p = n / 100;
    kvevict::RandomStream rng(11, 0, 0);
    k.resize(static_cast<std::size_t>(kKVHeads * n * kDim));
    v.resize(k.size());
    q.resize(static_cast<std::size_t>(kQHeads * p * kDim));
    for (auto* vec : {&k, &v, &q})
      for (auto& x : *vec) x = Eigen::half(static_cast<float>(2.0 * rng.uniform() - 1.0));
    kv.emplace(kvevict::Storage<Eigen::half>::hnd(k.data(), n, kDim),
               kvevict::Storage<Eigen::half>::hnd(v.data(), n, kDim),
               kvevict::Shape{kKVHeads, n, kDim});
    proxies.emplace(q.data(), kQHeads, p, kDim);
  }
};

/// NACL's whole select (budget 20%: 36 protected, the rest 1/3 top-k, 2/3 sampled).
void BM_NACL_Select(benchmark::State& state) {
  NACLProblem p(state.range(0));
  kvevict::Selection sel;
  kvevict::Workspace ws;
  const kvevict::NACL policy;
  for (auto _ : state) {
    policy.select(*p.kv, *p.proxies, kvevict::Budget::ratio(0.2), sel, ws);
    benchmark::DoNotOptimize(sel.kept(0).data());
  }
}
BENCHMARK(BM_NACL_Select)->Arg(32768)->Unit(benchmark::kMillisecond);

/// Its selection alone (protected regions, top-k, Gumbel-top-k sampling for 8 KV heads) from
/// given scores. Target: ≤ 10% of BM_NACL_Select.
void BM_NACL_Choose(benchmark::State& state) {
  const index_t n = state.range(0);
  std::vector<float> scores(static_cast<std::size_t>(kKVHeads * n));
  kvevict::RandomStream rng(12, 0, 0);
  for (float& x : scores) x = static_cast<float>(rng.uniform()) * 0.01f;
  const kvevict::Scores given{.values = scores,
                              .rows = kKVHeads,
                              .tokens = n,
                              .kv_heads = kKVHeads,
                              .kind = kvevict::ScoreRows::kv_heads,
                              .layer = 0};
  kvevict::Selection sel;
  kvevict::Workspace ws;
  const kvevict::NACL policy;
  for (auto _ : state) {
    policy.choose(given, kvevict::Budget::tokens(n / 5), sel, ws);
    benchmark::DoNotOptimize(sel.kept(0).data());
  }
}
BENCHMARK(BM_NACL_Choose)->Arg(32768)->Unit(benchmark::kMillisecond);

// ---- CriticalKV: the projected value norm
// ----------------------------------------------------------

constexpr index_t kHidden = 4096;

/// ‖V_j W_o^h‖ for n tokens, 32 query heads, d = 128, hidden 4096 (fp32 V and W_o).
void value_norms(benchmark::State& state, kvevict::NormKind kind) {
  const index_t n = state.range(0);
  Problem<float> p(n);
  std::vector<float> wo(static_cast<std::size_t>(kQHeads * kDim * kHidden));
  kvevict::RandomStream rng(5, 0, 0);
  for (float& x : wo) x = static_cast<float>(rng.uniform() - 0.5);
  const auto projection = kvevict::OutputProjection::dense(wo.data(), kQHeads, kDim, kHidden);
  const std::vector<float> gram = kind == kvevict::NormKind::l2
                                      ? kvevict::kernels::gram_matrices(projection)
                                      : std::vector<float>{};
  std::vector<float> out(static_cast<std::size_t>(kQHeads * n));
  kvevict::Workspace ws;
  for (auto _ : state) {
    kvevict::kernels::projected_value_norms(*p.kv, projection, n, kind, gram, out, ws);
    benchmark::DoNotOptimize(out.data());
  }
  const double inner = kind == kvevict::NormKind::l1 ? static_cast<double>(kHidden) : kDim;
  state.counters["FLOPS"] =
      benchmark::Counter(2.0 * static_cast<double>(n) * kDim * inner * kQHeads,
                         benchmark::Counter::kIsIterationInvariantRate);
}
/// L1 (the default): one GEMM per token block and head. Target ≥ 50% of sgemm.
void BM_CriticalKV_Norm_L1(benchmark::State& state) {
  value_norms(state, kvevict::NormKind::l1);
}
/// L2 through the precomputed Gram matrices: expected ≈ hidden / d = 32× faster than L1.
void BM_CriticalKV_Norm_L2(benchmark::State& state) {
  value_norms(state, kvevict::NormKind::l2);
}
BENCHMARK(BM_CriticalKV_Norm_L1)->Arg(32768)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_CriticalKV_Norm_L2)->Arg(32768)->Unit(benchmark::kMillisecond);

// ---- Cascade: linear-time chunked prefill -------------------------------------------------------

/// Prefill of an n-token prompt into a Cascade of 4 sinks + 4 cascades of 256 slots, chunks of
/// 256 (8 query / 2 KV heads, d = 128, fp16): O(n · (S + M + stride)), so the time per token
/// (`s_per_token`) stays flat as n grows from 8K to 128K.
void BM_Cascade_Prefill(benchmark::State& state) {
  const index_t n = state.range(0), q_heads = 8, kv_heads = 2;
  std::vector<Eigen::half> k(static_cast<std::size_t>(kv_heads * n * kDim)), v(k.size()),
      q(static_cast<std::size_t>(q_heads * n * kDim));
  kvevict::RandomStream rng(13, 0, 0);
  for (auto* vec : {&k, &v, &q})
    for (auto& x : *vec) x = Eigen::half(static_cast<float>(2.0 * rng.uniform() - 1.0));
  using S = kvevict::Storage<Eigen::half>;
  const kvevict::KVCache<Eigen::half> prompt(S::hnd(k.data(), n, kDim), S::hnd(v.data(), n, kDim),
                                             {kv_heads, n, kDim});
  const kvevict::QueryWindow<Eigen::half> queries(q.data(), q_heads, n, kDim);
  const kvevict::Cascade policy({.sinks = 4, .cascades = 4, .stride = 256});
  kvevict::Workspace ws;
  for (auto _ : state) {
    auto cascade = policy.start({.kv_heads = kv_heads, .q_heads = q_heads, .budget = 4 + 4 * 256});
    std::vector<Eigen::half> ks(static_cast<std::size_t>(kv_heads * cascade.slots() * kDim)),
        vs(ks.size());
    const kvevict::KVCache<Eigen::half> slots(S::hnd(ks.data(), cascade.slots(), kDim),
                                              S::hnd(vs.data(), cascade.slots(), kDim),
                                              {kv_heads, cascade.slots(), kDim});
    cascade.prefill(slots, prompt, queries, 0, ws);
    benchmark::DoNotOptimize(ks.data());
  }
  state.counters["s_per_token"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                     benchmark::Counter::kInvert);
}
BENCHMARK(BM_Cascade_Prefill)
    ->RangeMultiplier(2)
    ->Range(8192, 131072)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

// ---- decode steps: a streaming policy's bookkeeping against the attention step it rides on ----

/// One decode attention step at n cached tokens: for each query head, q·Kᵀ, softmax, ·V (fp32
/// storage, HND; each GQA group's 4 queries as one skinny GEMM). Reads all of K and V.
void BM_Attention_Step(benchmark::State& state) {
  const index_t n = state.range(0), g = kQHeads / kKVHeads;
  Problem<float> p(n);
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::MatrixXf logits(n, g), out(kDim, g);
  for (auto _ : state) {
    for (index_t kvh = 0; kvh < kKVHeads; ++kvh) {
      const Eigen::Map<const RowMatrix> k(p.kv->key(kvh, 0).data(), n, kDim);
      const Eigen::Map<const RowMatrix> v(p.kv->value(kvh, 0).data(), n, kDim);
      const Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>> q(
          p.window->query(kvh * g, 0).data(), g, kDim, Eigen::OuterStride<>(kWindow * kDim));
      logits.noalias() = k * q.transpose();
      for (index_t h = 0; h < g; ++h)
        kvevict::kernels::softmax_inplace({logits.col(h).data(), static_cast<std::size_t>(n)});
      out.noalias() = v.transpose() * logits;
    }
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Attention_Step)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);

/// One steady-state step of a streaming policy with the engine's probabilities given: the new
/// token's `append` and an `observe` that evicts one token per head from a full cache of n.
template <class P>
void policy_step(benchmark::State& state, const P& p) {
  const index_t n = state.range(0);
  auto policy = p.start({.kv_heads = kKVHeads, .q_heads = kQHeads, .budget = n - 1});
  std::vector<float> rows(static_cast<std::size_t>(kQHeads * n));
  kvevict::RandomStream rng(3, 0, 0);
  for (float& x : rows) x = static_cast<float>(rng.uniform()) / static_cast<float>(n);
  const kvevict::AttentionRows view{rows.data(), kQHeads, n, n};
  std::int64_t pos = 0;
  for (; pos < n - 1; ++pos) {  // fill to the budget
    policy.append(pos);
    policy.observe(view);
  }
  for (auto _ : state) {
    policy.append(pos++);
    benchmark::DoNotOptimize(policy.observe(view).slots.data());
  }
}
void BM_Step_H2O(benchmark::State& state) {
  policy_step(state, kvevict::H2O());
}
void BM_Step_TOVA(benchmark::State& state) {
  policy_step(state, kvevict::TOVA());
}
void BM_Step_StreamingLLM(benchmark::State& state) {
  policy_step(state, kvevict::StreamingLLM());
}
/// CORM, budget-free, in n + 1 slots filled first: one step scans every slot's importance.
void BM_Step_CORM(benchmark::State& state) {
  const index_t n = state.range(0);
  auto corm = kvevict::CORM().start({.kv_heads = kKVHeads, .q_heads = kQHeads, .capacity = n + 1});
  std::vector<float> rows(static_cast<std::size_t>(kQHeads * (n + 1)));
  kvevict::RandomStream rng(4, 0, 0);
  for (float& x : rows) x = 2.0f * static_cast<float>(rng.uniform()) / static_cast<float>(n);
  const kvevict::AttentionRows view{rows.data(), kQHeads, n + 1, n + 1};
  std::int64_t pos = 0;
  for (; pos < n; ++pos) {
    corm.append(pos);
    corm.observe(view);
  }
  for (auto _ : state) {
    corm.append(pos++);
    benchmark::DoNotOptimize(corm.observe(view).slots.data());
  }
}
BENCHMARK(BM_Step_H2O)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Step_CORM)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Step_TOVA)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Step_StreamingLLM)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);

// ---- periodic decode-time compression (kvpress DecodingPress semantics) ----------------------

/// One compression of a `PeriodicDriver` at N = 64: the cache holds n = B + 64 tokens (8 KV /
/// 32 query heads, d = 128, fp32 HND), the policy selects B with the last 32 queries, and
/// `compact` moves the kept tokens; then 64 appends refill it. Amortised per generated token:
/// time / 64, to compare with BM_Attention_Step at the same n (the target: ≤ 5%).
void periodic(benchmark::State& state, const char* spec) {
  const index_t n = state.range(0), every = 64;
  Problem<float> p(n);
  kvevict::PeriodicDriver<float> drv(kvevict::parse_policy(spec), n - every, every, *p.kv);
  std::vector<float> key(static_cast<std::size_t>(kKVHeads * kDim), 0.25f), value(key);
  kvevict::Workspace ws;
  std::int64_t pos = 0;
  for (; drv.size() < n; ++pos) drv.append(pos, key, value);  // the prompt's n tokens
  for (auto _ : state) {
    benchmark::DoNotOptimize(drv.observe(*p.window, ws));  // compresses to n − 64
    for (index_t i = 0; i < every; ++i, ++pos) drv.append(pos, key, value);
  }
  state.SetItemsProcessed(state.iterations() * every);  // generated tokens
}
void BM_Periodic_SnapKV(benchmark::State& state) {
  periodic(state, "snapkv:window=32");
}
void BM_Periodic_KNorm(benchmark::State& state) {
  periodic(state, "knorm");
}
void BM_Periodic_ExpectedAttention(benchmark::State& state) {
  periodic(state, "expected_attention");
}
BENCHMARK(BM_Periodic_SnapKV)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Periodic_KNorm)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Periodic_ExpectedAttention)->Arg(32768)->Unit(benchmark::kMillisecond);

// ---- compaction --------------------------------------------------------------------------------

/// Every head keeps its own random half of n tokens (seeded): scattered runs of about two tokens,
/// compaction's hard case.
kvevict::Selection random_half(index_t heads, index_t n) {
  kvevict::Selection sel;
  sel.reset(heads, n, /*shared=*/false);
  std::mt19937_64 rng(1);
  std::vector<kvevict::token_t> all(static_cast<std::size_t>(n));
  for (index_t h = 0; h < heads; ++h) {
    for (index_t i = 0; i < n; ++i)
      all[static_cast<std::size_t>(i)] = static_cast<kvevict::token_t>(i);
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + n / 2);
    auto kept = sel.add_head(n / 2);
    std::copy(all.begin(), all.begin() + n / 2, kept.begin());
  }
  return sel;
}

/// Compacts the kept half of an n-token, 8-head, d = 128 fp32 HND cache in place: every head
/// keeps its own random half (scattered runs, the hard case). Bytes = kept K + V moved.
void BM_Compact(benchmark::State& state) {
  const index_t n = state.range(0), heads = 8, d = 128;
  std::vector<float> k(static_cast<std::size_t>(heads * n * d), 1.0f), v(k.size(), 2.0f);
  const kvevict::KVCache<float> kv(kvevict::Storage<float>::hnd(k.data(), n, d),
                                   kvevict::Storage<float>::hnd(v.data(), n, d),
                                   {.kv_heads = heads, .tokens = n, .head_dim = d});
  const kvevict::Selection sel = random_half(heads, n);
  kvevict::Compaction out;
  for (auto _ : state) {
    kvevict::compact(kv, sel, out);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * heads * (n / 2) * d * 2 *
                          static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_Compact)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond);

/// The same cache compacted with the per-head selection SnapKV makes at a 50% budget (pooling
/// clusters kept tokens into runs): the typical case next to BM_Compact's scattered worst case.
void BM_Compact_SnapKV(benchmark::State& state) {
  const index_t n = state.range(0);
  Problem<float> p(n);
  kvevict::Selection sel;
  kvevict::Workspace ws;
  kvevict::SnapKV().select(*p.kv, *p.window, kvevict::Budget::ratio(0.5), sel, ws);
  kvevict::Compaction out;
  for (auto _ : state) {
    kvevict::compact(*p.kv, sel, out);
    benchmark::ClobberMemory();
  }
  index_t moved = 0;
  for (index_t h = 0; h < kKVHeads; ++h) moved += sel.size(h);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * moved * kDim * 2 *
                          static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_Compact_SnapKV)->Arg(32768)->Unit(benchmark::kMillisecond);

/// BM_Compact's random half over a q8_0 cache (blocks of 34 bytes: rows of 136 bytes, not a
/// multiple of 64). Bytes = kept K + V blocks moved.
void BM_Compact_Q8_0(benchmark::State& state) {
  const index_t n = state.range(0), heads = 8, d = 128, row = d / 32;
  std::vector<kvevict::q8_0> k(static_cast<std::size_t>(heads * n * row)), v(k.size());
  const kvevict::KVCache<kvevict::q8_0> kv(kvevict::Storage<kvevict::q8_0>::hnd(k.data(), n, d),
                                           kvevict::Storage<kvevict::q8_0>::hnd(v.data(), n, d),
                                           {.kv_heads = heads, .tokens = n, .head_dim = d});
  const kvevict::Selection sel = random_half(heads, n);
  kvevict::Compaction out;
  for (auto _ : state) {
    kvevict::compact(kv, sel, out);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * heads * (n / 2) * row *
                          2 * static_cast<std::int64_t>(sizeof(kvevict::q8_0)));
}
BENCHMARK(BM_Compact_Q8_0)->Arg(32768)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
