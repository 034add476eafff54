// Tensor-parallel selection over MPI (issue 16): two ranks, each holding half the KV heads
// (with their query heads), score their shard, all-reduce the zero-padded score rows with
// MPI_Allreduce, and choose — identical sets on both ranks, equal to the selection one process
// makes with every head, for every scoring policy and every granularity that applies.
// Run: mpirun --oversubscribe -np 2 test_mpi   (as root: OMPI_ALLOW_RUN_AS_ROOT=1 and
// OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1). Exit status 0 when every case agrees.
// SPDX-License-Identifier: Apache-2.0
#define OMPI_SKIP_MPICXX 1  // the C API only
#include <mpi.h>

#include <kvevict/registry.hpp>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace kvevict;

int failures = 0;

void check(bool ok, const std::string& what, int rank) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "rank %d: FAILED %s\n", rank, what.c_str());
  }
}

std::vector<std::int32_t> flatten(const Selection& s) {
  std::vector<std::int32_t> out;
  for (index_t h = 0; h < s.stored_heads(); ++h) {
    out.push_back(-1 - static_cast<std::int32_t>(h));
    for (token_t t : s.kept(h)) out.push_back(t);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const index_t kv_heads = 4, g = 2, q_heads = kv_heads * g, n = 160, d = 16, w = 16, hidden = 32;
  if (kv_heads % ranks != 0) {
    if (rank == 0)
      std::fprintf(stderr, "test_mpi: expected a rank count dividing %lld\n",
                   static_cast<long long>(kv_heads));
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const index_t mine = kv_heads / ranks, first = rank * mine;
  // The same layer on every rank (same seed); each rank views only its heads.
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> k(static_cast<std::size_t>(kv_heads * n * d)), v(k.size()),
      q(static_cast<std::size_t>(q_heads * w * d)),
      wo(static_cast<std::size_t>(q_heads * d * hidden));
  for (auto* x : {&k, &v, &q, &wo})
    for (float& e : *x) e = normal(rng);
  for (index_t t = 0; t < n; t += 9)  // a few heavy hitters, so choices are not all noise
    for (index_t h = 0; h < kv_heads; ++h) k[static_cast<std::size_t>((h * n + t) * d)] += 4.0f;
  const KVCache<float> full(Storage<float>::hnd(k.data(), n, d),
                            Storage<float>::hnd(v.data(), n, d),
                            {.kv_heads = kv_heads, .tokens = n, .head_dim = d});
  const KVCache<float> shard(Storage<float>::hnd(k.data() + first * n * d, n, d),
                             Storage<float>::hnd(v.data() + first * n * d, n, d),
                             {.kv_heads = mine, .tokens = n, .head_dim = d});
  const QueryWindow<float> all_q(q.data(), q_heads, w, d);
  const QueryWindow<float> my_q(q.data() + first * g * w * d, mine * g, w, d);
  const OutputProjection full_wo = OutputProjection::dense(wo.data(), q_heads, d, hidden);
  const OutputProjection my_wo =
      OutputProjection::dense(wo.data() + first * g * d * hidden, mine * g, d, hidden);

  int cases = 0;
  for_each_policy([&]<class P>() {
    if constexpr (P::info.scores) {
      for (const Granularity gran :
           {Granularity::per_head, Granularity::equal, Granularity::shared, Granularity::layers}) {
        PolicyOptions opts{.settings = {}, .seed = 5, .granularity = gran, .wo = &full_wo};
        for (const auto& f : P::parameters())  // a window that fits the 16 queries
          if (std::string(f.name) == "window") opts.settings.emplace_back("window", "8");
        const AnyPolicy one = make_policy(P::name, opts);
        opts.wo = &my_wo;
        const AnyPolicy local = make_policy(P::name, opts);
        const Budget budget = P::info.budget_free ? Budget::none() : Budget::tokens(48);
        const std::string what = std::string(P::name) + " " + std::string(to_string(gran));
        Workspace ws;
        Selection want, got;
        kvevict::select(one, full, all_q, budget, want, ws);
        // the two calls: place this rank's rows, all-reduce, choose on the whole layer
        [&](const P& p) {
          Workspace::Frame frame(ws);
          const Scores s = p.score(shard, my_q, gran, ws);
          if (s.kind == ScoreRows::shared) return;  // reduced over heads already: not shardable
          const Shard where{.first_kv_head = first, .total_kv_heads = kv_heads};
          std::vector<float> buffer(static_cast<std::size_t>(scores_size(s, where)));
          place_shard(s, where, buffer);
          MPI_Allreduce(MPI_IN_PLACE, buffer.data(), static_cast<int>(buffer.size()), MPI_FLOAT,
                        MPI_SUM, MPI_COMM_WORLD);
          p.choose(whole_layer(s, where, buffer), budget, got, ws);
          ++cases;
        }(*local.template target<P>());
        if (!got.complete()) continue;
        check(flatten(got) == flatten(want),
              what + ": sharded selection equals the single process's", rank);
        // every rank chose the same set: compare with rank 0's
        std::vector<std::int32_t> mine_flat = flatten(got);
        int size = static_cast<int>(mine_flat.size()), size0 = size;
        MPI_Bcast(&size0, 1, MPI_INT, 0, MPI_COMM_WORLD);
        std::vector<std::int32_t> zero = mine_flat;
        zero.resize(static_cast<std::size_t>(size0));
        MPI_Bcast(zero.data(), size0, MPI_INT32_T, 0, MPI_COMM_WORLD);
        check(size == size0 && zero == mine_flat, what + ": identical on every rank", rank);
      }
    }
  });
  int total_failures = 0;
  MPI_Allreduce(&failures, &total_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("test_mpi: %d ranks, %d policy x granularity cases, %d failures\n", ranks, cases,
                total_failures);
  MPI_Finalize();
  return total_failures == 0 && cases > 0 ? 0 : 1;
}
