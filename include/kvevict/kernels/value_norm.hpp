// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Projected value norms `‖V_j · W_o^h‖`: how much token j can move head h's contribution
/// to the layer output (CriticalKV's second-stage weight).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <span>
#include <string_view>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"
#include "../output_projection.hpp"
#include "../workspace.hpp"
#include "finite.hpp"

namespace kvevict {

/// Which norm of the projected value.
enum class NormKind {
  l1,  ///< ‖v W‖₁ over the hidden size: the paper's bound (default)
  l2,  ///< ‖v W‖₂ = sqrt(vᵀ G v), G = W Wᵀ precomputed: d² per token instead of d · hidden
};

constexpr std::string_view to_string(NormKind k) {
  return k == NormKind::l1 ? "l1" : "l2";
}

/// Every `NormKind`, in the order the command lists them.
constexpr std::array<NormKind, 2> all_values(NormKind) {
  return {NormKind::l1, NormKind::l2};
}

namespace kernels {
/// G_h = W_o^h W_o^hᵀ (head_dim × head_dim, row-major) for every query head, concatenated:
/// what the L2 norm needs, computed once per layer. O(q_heads · head_dim² · hidden) FLOPs;
/// allocates the result (q_heads · head_dim² floats) and one head of W_o in fp32.
inline std::vector<float> gram_matrices(const OutputProjection& wo) {
  const index_t d = wo.head_dim(), hidden = wo.hidden();
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<float> out(static_cast<std::size_t>(wo.q_heads() * d * d));
  std::vector<float> w(static_cast<std::size_t>(d * hidden));
  for (index_t h = 0; h < wo.q_heads(); ++h) {
    wo.head(h, w);
    const Eigen::Map<const RowMatrix> wm(w.data(), d, hidden);
    Eigen::Map<RowMatrix>(out.data() + h * d * d, d, d).noalias() = wm * wm.transpose();
  }
  return out;
}

}  // namespace kernels
namespace detail {

/// Names the first non-finite value of KV head `kvh` or element of W_o head `h` (slow path).
template <Element T>
[[noreturn]] void report_non_finite_norm(const KVCache<T>& kv, const OutputProjection& wo,
                                         index_t kvh, index_t h) {
  require_finite_scales(kv);
  std::vector<float> row(static_cast<std::size_t>(kv.head_dim_v()));
  for (index_t t = 0; t < kv.tokens(); ++t) {
    kv.read(Tensor::values, kvh, t, row.data());
    for (index_t i = 0; i < kv.head_dim_v(); ++i) {
      const float x = row[static_cast<std::size_t>(i)];
      if (!std::isfinite(x))
        fail("values", "finite values", x, " at KV head ", kvh, ", token ", t, ", element ", i);
    }
  }
  for (index_t i = 0; i < wo.head_dim(); ++i)
    for (index_t k = 0; k < wo.hidden(); ++k)
      if (!std::isfinite(wo.at(h, i, k)))
        fail("wo", "finite values", wo.at(h, i, k), " at query head ", h, ", row ", i, ", column ",
             k);
  fail("values", "finite projected norms", "an overflow for query head ", h,
       " (finite but huge values or W_o)");
}

}  // namespace detail

namespace kernels {
/// `out[h · m + j] = ‖V_{h/g}[j] · W_o^h‖` for every query head h of `wo` and token j in
/// [0, m), g = q_heads / kv_heads. L1: one GEMM per block of tokens and head against W_o^h
/// (2·m·d·hidden FLOPs per query head) and a row-wise |·| sum; L2: `sqrt(vᵀ G_h v)` from
/// `gram` (from `gram_matrices(wo)`), 2·m·d² FLOPs per query head.
///
/// Scratch from `ws`: g · d · hidden + 128 · (d + hidden) floats (L1), 128 · 2d (L2); none
/// allocated once warm. Throws `kvevict::error` when `wo` does not match the values (head_dim,
/// GQA) or a value / W_o element is not finite (named). Single threaded.
template <Element T>
void projected_value_norms(const KVCache<T>& kv, const OutputProjection& wo, index_t m,
                           NormKind kind, std::span<const float> gram, std::span<float> out,
                           Workspace& ws) {
  const index_t d = kv.head_dim_v(), hidden = wo.hidden(), q_heads = wo.q_heads();
  if (wo.head_dim() != d)
    detail::fail("wo.head_dim", detail::cat("the values' head_dim (", d, ")"), wo.head_dim());
  if (q_heads % kv.kv_heads() != 0)
    detail::fail("wo.q_heads", detail::cat("a multiple of kv_heads (", kv.kv_heads(), ")"),
                 q_heads);
  if (m < 0 || m > kv.tokens())
    detail::fail("m", detail::cat("a token count in [0, ", kv.tokens(), "]"), m);
  if (static_cast<index_t>(out.size()) != q_heads * m)
    detail::fail("out", detail::cat("q_heads · m (", q_heads * m, ") floats"), out.size());
  if (kind == NormKind::l2 && static_cast<index_t>(gram.size()) != q_heads * d * d)
    detail::fail("gram", detail::cat("q_heads · head_dim² (", q_heads * d * d, ") floats"),
                 gram.size());
  const index_t g = q_heads / kv.kv_heads(), block = 128;
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Workspace::Frame frame(ws);
  float* const wbuf = kind == NormKind::l1 ? ws.take<float>(g * d * hidden).data() : nullptr;
  float* const vbuf = ws.take<float>(block * d).data();
  float* const ybuf = ws.take<float>(block * (kind == NormKind::l1 ? hidden : d)).data();
  for (index_t kvh = 0; kvh < kv.kv_heads(); ++kvh) {
    if (kind == NormKind::l1)
      for (index_t hg = 0; hg < g; ++hg)
        wo.head(kvh * g + hg, {wbuf + hg * d * hidden, static_cast<std::size_t>(d * hidden)});
    for (index_t b0 = 0; b0 < m; b0 += block) {
      const index_t count = std::min(block, m - b0);
      if constexpr (QuantizedElement<T>) {
        for (index_t t = 0; t < count; ++t) kv.read(Tensor::values, kvh, b0 + t, vbuf + t * d);
      } else {
        kv.for_each_run(Tensor::values, kvh, b0, b0 + count, [&](const TokenRun<T>& run) {
          for (index_t t = 0; t < run.count; ++t)
            to_float(run.data + t * run.stride, vbuf + (run.first - b0 + t) * d, d);
        });
      }
      const Eigen::Map<const RowMatrix> v(vbuf, count, d);
      for (index_t hg = 0; hg < g; ++hg) {
        const index_t h = kvh * g + hg;
        Eigen::Map<Eigen::VectorXf> dst(out.data() + h * m + b0, count);
        if (kind == NormKind::l1) {
          Eigen::Map<RowMatrix> y(ybuf, count, hidden);
          y.noalias() = v * Eigen::Map<const RowMatrix>(wbuf + hg * d * hidden, d, hidden);
          dst = y.cwiseAbs().rowwise().sum();
        } else {
          Eigen::Map<RowMatrix> z(ybuf, count, d);
          z.noalias() = v * Eigen::Map<const RowMatrix>(gram.data() + h * d * d, d, d);
          dst = z.cwiseProduct(v).rowwise().sum();
        }
        if (!dst.allFinite()) detail::report_non_finite_norm(kv, wo, kvh, h);
        if (kind == NormKind::l2) dst = dst.cwiseMax(0.0f).cwiseSqrt();  // vᵀGv ≥ 0 up to rounding
      }
    }
  }
}

}  // namespace kernels
}  // namespace kvevict
