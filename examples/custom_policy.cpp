// A policy of the engine's own: registered by name, then selected from a config string, run
// across the layers of a sequence and evaluated beside the library's policies.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/batch.hpp>
#include <kvevict/eval/compare.hpp>
#include <kvevict/registry.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

// ---- the policy: 30 lines — keep the tokens whose values have the largest L2 norm (times an
// exponent), an attention-free scorer in the spirit of VATP / KNorm ------------------------------
struct ValueNormParams {
  double power = 1.0;  // the score is ‖v‖^power
  kvevict::Granularity granularity = kvevict::Granularity::per_head;
};

class ValueNorm : public kvevict::OneShot<ValueNorm, ValueNormParams> {
 public:
  using OneShot::OneShot;
  static constexpr std::string_view name = "value_norm";
  static constexpr kvevict::PolicyInfo info{.summary = "largest value norms (example)",
                                            .reads = kvevict::reads_values};
  static std::vector<kvevict::Parameter<Params>> parameters() {
    return kvevict::with_common_parameters<Params>(  // + granularity
        {kvevict::param<&Params::power>("power", "> 0", "exponent of the norm")});
  }
  static void check(const Params& p) {
    kvevict::detail::require(p.power > 0, "power", "power > 0", p.power);
  }
  kvevict::TopK rule(kvevict::index_t) const { return {}; }

  template <kvevict::Element T>
  kvevict::Scores score(const kvevict::KVCache<T>& kv,
                        const kvevict::QueryWindow<kvevict::query_type<T>>&, kvevict::Granularity,
                        kvevict::Workspace& ws) const {
    const kvevict::index_t n = kv.tokens(), dv = kv.head_dim_v();
    const auto out = ws.take<float>(kv.kv_heads() * n);
    const auto v = ws.take<float>(dv);
    for (kvevict::index_t h = 0; h < kv.kv_heads(); ++h)
      for (kvevict::index_t t = 0; t < n; ++t) {
        kv.read(kvevict::Tensor::values, h, t, v.data());
        double sq = 0;
        for (float x : v) sq += double{x} * x;
        out[static_cast<std::size_t>(h * n + t)] =
            static_cast<float>(std::pow(std::sqrt(sq), params().power));
      }
    return kvevict::Scores::of_kv_heads(out, kv);
  }
};

// ---- using it ---------------------------------------------------------------------------------
int main() {
  kvevict::register_policy<ValueNorm>();
  const kvevict::AnyPolicy mine = kvevict::parse_policy("value_norm: power = 2");

  // Eight layers of a generated sequence (kvevict's value_norms workload), one selection each.
  std::vector<kvevict::eval::Layer> layers;
  std::vector<kvevict::KVCache<float>> caches;
  std::vector<kvevict::QueryWindow<float>> windows;
  for (std::uint64_t l = 0; l < 8; ++l) {
    auto spec = kvevict::eval::workload_preset("value_norms");
    spec.n = 1024;
    spec.seed = l;
    layers.push_back(kvevict::eval::layer_from(kvevict::eval::generate(spec)));
  }
  for (const auto& layer : layers) {
    caches.push_back(layer.cache());
    windows.push_back(layer.window_queries());
  }
  std::vector<kvevict::Selection> keep(layers.size());
  kvevict::Workspace ws;
  kvevict::select_layers<float>(mine, caches, windows, kvevict::Budget::ratio(0.25), keep, ws);
  std::printf("value_norm kept %lld of %lld tokens per head in each of %zu layers\n",
              static_cast<long long>(keep[0].size(0)), static_cast<long long>(caches[0].tokens()),
              keep.size());

  // Evaluated beside two of the library's policies on layer 0, as `kvevict eval` does.
  bool ok = keep[0].size(0) == 256;
  for (const char* spec : {"value_norm:power=2", "knorm", "streaming_llm"}) {
    const auto row =
        kvevict::eval::run(layers[0], kvevict::parse_policy(spec), kvevict::Budget::ratio(0.25),
                           kvevict::eval::Mode::one_shot, ws);
    std::printf("%-20s output error %.4f  kept attention mass %.3f\n", spec, row.metrics.error,
                row.metrics.kept_mass);
    ok = ok && std::isfinite(row.metrics.error);
  }
  return ok ? 0 : 1;
}
