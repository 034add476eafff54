// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief What a selection costs in fidelity, measured on held-out queries: attention-output
/// error (per head and after W_o), kept attention mass, needle recall.

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../error.hpp"
#include "../kernels/softmax.hpp"
#include "../selection.hpp"

namespace kvevict::eval {

/// One layer as the metrics see it: dense fp32 K, V [kv_heads][n][d], held-out queries
/// [q_heads][future][d] that attend over the whole context, optionally W_o
/// [q_heads][d_v][hidden] and the positions of needle tokens.
struct EvalLayer {
  const float* keys = nullptr;
  const float* values = nullptr;
  const float* future = nullptr;
  const float* wo = nullptr;  ///< may be null: no after-W_o metrics
  index_t kv_heads = 0, q_heads = 0, n = 0, d = 0, d_v = 0, future_count = 0, hidden = 0;
  std::span<const index_t> needles = {};
  /// What a quantized cache holds (dequantized K and V, same layout), or null: the compressed
  /// output ô is computed from these — attention over the stored keys, the stored values —
  /// and compared with the exact fp32 output, so the error is quantization and eviction
  /// together. The kept mass stays that of the exact attention.
  const float* approx_keys = nullptr;
  const float* approx_values = nullptr;
};

/// Fidelity of a kept set. Errors are relative L2 distances between the output over the kept
/// tokens (softmax renormalised over them) and the output over the whole context, averaged over
/// held-out queries (and query heads where per head).
struct Metrics {
  double error = 0;  ///< mean over (query head, query) of ‖ô_h − o_h‖ / ‖o_h‖
  double error_wo = std::numeric_limits<double>::quiet_NaN();  ///< the layer output Σ_h o_h W_o^h
  double kept_mass = 0;  ///< mean over (query head, query) of the kept tokens' attention
  double needle_recall = std::numeric_limits<double>::quiet_NaN();  ///< (KV head, needle) kept
  std::vector<double> head_error;  ///< per query head: mean ‖ô_h − o_h‖ / ‖o_h‖
  std::vector<double> head_error_wo;  ///< per query head: mean ‖(ô_h − o_h) W_o^h‖ / ‖o_h W_o^h‖
};

namespace detail {
inline double relative(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}
}  // namespace detail

/// Measures `kept` (a selection over the layer's n tokens) on the held-out queries.
/// O(q_heads · future · (n · (d + d_v) + d_v · hidden)); allocates its buffers.
inline Metrics evaluate(const EvalLayer& layer, const Selection& kept) {
  using kvevict::detail::fail;
  if (kept.tokens() != layer.n || kept.kv_heads() != layer.kv_heads)
    fail(
        "selection",
        kvevict::detail::cat("a selection over ", layer.kv_heads, " heads of ", layer.n, " tokens"),
        kept.kv_heads(), " heads of ", kept.tokens());
  const index_t g = layer.q_heads / layer.kv_heads, n = layer.n, d = layer.d, dv = layer.d_v;
  const index_t f = layer.future_count;
  Metrics m;
  m.head_error.assign(static_cast<std::size_t>(layer.q_heads), 0.0);
  if (layer.wo != nullptr) m.head_error_wo.assign(static_cast<std::size_t>(layer.q_heads), 0.0);
  std::vector<float> p(static_cast<std::size_t>(n));
  const bool stored = layer.approx_keys != nullptr && layer.approx_values != nullptr;
  std::vector<float> pa(stored ? static_cast<std::size_t>(n) : 0);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n));
  // Per query: the full and kept outputs of every head, and their projections.
  std::vector<std::vector<double>> full(static_cast<std::size_t>(layer.q_heads)),
      approx(static_cast<std::size_t>(layer.q_heads));
  std::vector<double> y_full(static_cast<std::size_t>(layer.hidden)), y_approx(y_full.size()),
      yh_full(y_full.size()), yh_approx(y_full.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  double error_wo = 0;
  for (index_t i = 0; i < f; ++i) {
    for (index_t h = 0; h < layer.q_heads; ++h) {
      const index_t kvh = h / g;
      kept.to_mask(kvh, mask);
      const float* q = layer.future + (h * f + i) * d;
      for (index_t j = 0; j < n; ++j)
        p[static_cast<std::size_t>(j)] = kernels::dot(q, layer.keys + (kvh * n + j) * d, d) * scale;
      kernels::softmax_inplace(p);
      if (stored) {
        for (index_t j = 0; j < n; ++j)
          pa[static_cast<std::size_t>(j)] =
              kernels::dot(q, layer.approx_keys + (kvh * n + j) * d, d) * scale;
        kernels::softmax_inplace(pa);
      }
      auto& o = full[static_cast<std::size_t>(h)];
      auto& oh = approx[static_cast<std::size_t>(h)];
      o.assign(static_cast<std::size_t>(dv), 0.0);
      oh.assign(static_cast<std::size_t>(dv), 0.0);
      double mass = 0, total = 0, approx_mass = 0;
      for (index_t j = 0; j < n; ++j) {
        const double pj = p[static_cast<std::size_t>(j)];
        const float* v = layer.values + (kvh * n + j) * dv;
        const bool in = mask[static_cast<std::size_t>(j)] != 0;
        mass += in ? pj : 0.0;
        total += pj;
        for (index_t e = 0; e < dv; ++e) {
          o[static_cast<std::size_t>(e)] += pj * v[e];
          if (in && !stored) oh[static_cast<std::size_t>(e)] += pj * v[e];
        }
        if (in && stored) {
          const double qj = pa[static_cast<std::size_t>(j)];
          const float* va = layer.approx_values + (kvh * n + j) * dv;
          approx_mass += qj;
          for (index_t e = 0; e < dv; ++e) oh[static_cast<std::size_t>(e)] += qj * va[e];
        }
      }
      // Both normalised by their own sums (the same arithmetic when everything is kept).
      for (double& x : o) x /= total;
      const double kept_sum = stored ? approx_mass : mass;
      for (double& x : oh) x = kept_sum > 0 ? x / kept_sum : 0.0;
      m.kept_mass += mass / total / static_cast<double>(f * layer.q_heads);
      m.head_error[static_cast<std::size_t>(h)] += detail::relative(oh, o) / static_cast<double>(f);
    }
    if (layer.wo == nullptr) continue;
    std::fill(y_full.begin(), y_full.end(), 0.0);
    std::fill(y_approx.begin(), y_approx.end(), 0.0);
    for (index_t h = 0; h < layer.q_heads; ++h) {
      std::fill(yh_full.begin(), yh_full.end(), 0.0);
      std::fill(yh_approx.begin(), yh_approx.end(), 0.0);
      for (index_t e = 0; e < dv; ++e) {
        const float* row = layer.wo + (h * dv + e) * layer.hidden;
        const double a = full[static_cast<std::size_t>(h)][static_cast<std::size_t>(e)];
        const double b = approx[static_cast<std::size_t>(h)][static_cast<std::size_t>(e)];
        for (index_t k = 0; k < layer.hidden; ++k) {
          yh_full[static_cast<std::size_t>(k)] += a * row[k];
          yh_approx[static_cast<std::size_t>(k)] += b * row[k];
        }
      }
      m.head_error_wo[static_cast<std::size_t>(h)] +=
          detail::relative(yh_approx, yh_full) / static_cast<double>(f);
      for (index_t k = 0; k < layer.hidden; ++k) {
        y_full[static_cast<std::size_t>(k)] += yh_full[static_cast<std::size_t>(k)];
        y_approx[static_cast<std::size_t>(k)] += yh_approx[static_cast<std::size_t>(k)];
      }
    }
    error_wo += detail::relative(y_approx, y_full) / static_cast<double>(f);
  }
  for (double e : m.head_error) m.error += e / static_cast<double>(layer.q_heads);
  if (layer.wo != nullptr) m.error_wo = error_wo;
  if (!layer.needles.empty()) {
    index_t found = 0;
    for (index_t h = 0; h < layer.kv_heads; ++h)
      for (index_t pos : layer.needles) {
        const auto k = kept.kept(h);
        found += std::binary_search(k.begin(), k.end(), static_cast<token_t>(pos));
      }
    m.needle_recall =
        static_cast<double>(found) /
        static_cast<double>(layer.kv_heads * static_cast<index_t>(layer.needles.size()));
  }
  return m;
}

}  // namespace kvevict::eval
