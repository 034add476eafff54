// kvevict microbenchmarks. Ratios, not times: every figure is compared with a ceiling measured in
// the same run (BM_Ceiling_Sgemm1024 for FLOP/s, BM_Ceiling_Memcpy for bytes/s).
// SPDX-License-Identifier: Apache-2.0
#include <benchmark/benchmark.h>

#include <kvevict/kvevict.hpp>

#include <Eigen/Dense>
#include <cstring>
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

// ---- compaction --------------------------------------------------------------------------------

/// Compacts the kept half of an n-token, 8-head, d = 128 fp32 HND cache in place: every head
/// keeps its own random half (scattered runs, the hard case). Bytes = kept K + V moved.
void BM_Compact(benchmark::State& state) {
  const index_t n = state.range(0), heads = 8, d = 128;
  std::vector<float> k(static_cast<std::size_t>(heads * n * d), 1.0f), v(k.size(), 2.0f);
  const kvevict::KVCache<float> kv(kvevict::Storage<float>::hnd(k.data(), n, d),
                                   kvevict::Storage<float>::hnd(v.data(), n, d),
                                   {.kv_heads = heads, .tokens = n, .head_dim = d});
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
  kvevict::Compaction out;
  for (auto _ : state) {
    kvevict::compact(kv, sel, out);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * heads * (n / 2) * d * 2 *
                          static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_Compact)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
