// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief ExpectedAttention: the attention future queries are expected to pay each key, from
/// the statistics of the past queries — no attention matrix of the past needed.

#include <Eigen/Core>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../element.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/finite.hpp"
#include "../kernels/norm.hpp"
#include "../kernels/rope.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `ExpectedAttention` (kvpress's defaults).
struct ExpectedAttentionParams {
  index_t n_future = 512;      ///< future positions the expectation averages over
  index_t n_sink = 4;          ///< first tokens: always kept, their queries not in the statistics
  bool use_covariance = true;  ///< the second-order term kᵀΣ'k / 2d
  bool use_vnorm = true;       ///< weigh by ‖v‖₂
  double epsilon = 0.0;        ///< added before the ‖v‖ weighting
  double rope_base = 10000.0;  ///< the model's RoPE θ base
  RopeStyle rope_style = RopeStyle::neox;  ///< HF pairs (k, k + d/2); llama.cpp: gptj
  Granularity granularity = Granularity::per_head;
};

/// ExpectedAttention (Devoto et al., "Expected Attention: KV Cache Compression by Estimating
/// Attention from Future Queries Distribution", arXiv 2510.00636, §3; upstream NVIDIA/kvpress
/// `kvpress/presses/expected_attention_press.py`, commit 8bb29b9).
///
/// What the engine passes: the cache and a window of its queries **as the cache holds them
/// (post-RoPE)**, at positions n − w … n − 1 — normally every prompt query (kvpress uses all
/// prefill queries after the sinks). They are turned back to pre-RoPE queries q = R(−p) q̃ with
/// the model's RoPE (`rope_base`, `rope_style`); queries at positions < n_sink are left out.
/// Per query head, with N queries: μ = mean q, Σ = Σ (q − μ)(q − μ)ᵀ / N (biased, as upstream).
/// The future queries sit at positions n … n + n_future − 1; their rotation is averaged once,
/// R̄ = mean_t R_t (per frequency pair θ_i: c̄ = mean cos tθ_i, s̄ = mean sin tθ_i), and
/// applied to the statistics: μ' = R̄μ, Σ' = R̄ΣR̄ᵀ (the averaged rotation applied once, as
/// upstream — not the average of R_tΣR_tᵀ). For each post-RoPE key k of a non-sink token:
///
///     s = μ'·k / √d  +  kᵀΣ'k / (2d)        (the second term with `use_covariance`)
///
/// then softmax over the non-sink tokens per query head, the mean over the KV head's group,
/// and `(s + ε) · ‖v‖₂` with `use_vnorm`. The n_sink first tokens are protected (upstream gives
/// them the maximum score plus one).
///
/// Deviations: the queries come post-RoPE from the engine and are un-rotated here (upstream
/// recomputes them from hidden states with q_proj); ties keep the more recent token; kept tokens
/// stay in position order; the statistics, logits and softmax in double, the products of keys
/// with μ' and the rotated queries in float (one GEMM; upstream runs in the model's dtype).
///
/// - Complexity per KV head O(g·N·d + n·g·N·d): kᵀΣ'k is evaluated as (1/N) Σ_j ((R̄z_j)·k)²
///   over N − 1 folded queries z_j, so the g query heads' logits are one float GEMM of the keys
///   (in blocks of 1024) with the d × g·N matrix of their μ' and R̄z_j — never a d × d form per
///   key (on AVX-512 targets `window_attention`'s logits kernel, elsewhere Eigen's GEMM). The
///   fold: the centred queries x_j = q_j − μ sum to zero, so N − 1 vectors carry their whole
///   second moment, z_j = x_j + x_N / (√N − 1) for j < N (the first N − 1 columns of the
///   Householder reflection taking 1/√N to e_N): Σ_{j<N} z_j z_jᵀ = Σ_{j≤N} x_j x_jᵀ exactly, as
///   −2c + (N − 1)c² = 1 for c = 1/(√N − 1). One product column per head fewer — for kvpress's
///   window of 32 queries and 4 heads per group, 128 product rows instead of 132, which the
///   kernel's 32-row tiles would pad to 160 (timings: bench/README.md, `BM_Periodic_*`).
///   Scratch from `ws`: kv_heads · n floats (the scores), g · n doubles, and
///   1024 · (d + g·N) + 2 · d · g·N floats (+ padding to 32 rows).
class ExpectedAttention : public OneShot<ExpectedAttention, ExpectedAttentionParams> {
 public:
  static constexpr std::string_view name = "expected_attention";
  static constexpr PolicyInfo info{
      .summary = "attention expected from future queries' statistics (Devoto et al. 2025)",
      .reads = reads_keys | reads_queries | reads_values};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::n_future>("n_future", "≥ 1", "future positions averaged over"),
         param<&Params::n_sink>("n_sink", "≥ 0", "first tokens kept, left out of the statistics"),
         param<&Params::use_covariance>("use_covariance", "", "the second-order term"),
         param<&Params::use_vnorm>("use_vnorm", "", "weigh by the value norm"),
         param<&Params::epsilon>("epsilon", "≥ 0", "added before the value-norm weighting"),
         param<&Params::rope_base>("rope_base", "> 1", "the model's RoPE base"),
         param<&Params::rope_style>("rope_style", "", "neox (HF) or gptj (llama.cpp)")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.n_future >= 1, "n_future", "n_future >= 1", p.n_future);
    detail::require(p.n_sink >= 0, "n_sink", "n_sink >= 0", p.n_sink);
    detail::require(std::isfinite(p.epsilon) && p.epsilon >= 0.0, "epsilon", "epsilon >= 0",
                    p.epsilon);
    detail::require(std::isfinite(p.rope_base) && p.rope_base > 1.0, "rope_base",
                    "a finite base > 1", p.rope_base);
  }

  TopK rule(index_t) const noexcept { return {}; }
  Protected protect(index_t) const noexcept { return {.sinks = params_.n_sink}; }

  template <Element T>
  void check_inputs(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries) const {
    if (kv.head_dim() % 2 != 0)
      detail::fail("keys.head_dim", "an even head_dim (RoPE pairs)", kv.head_dim());
    if (kv.tokens() <= params_.n_sink)
      detail::fail("keys.tokens", detail::cat("more than n_sink (", params_.n_sink, ") tokens"),
                   kv.tokens());
    const index_t first = kv.tokens() - queries.window();
    if (first + queries.window() <= params_.n_sink)
      detail::fail("queries", "at least one query after the sinks", "none");
  }

  /// Expected attention per KV head and token (`[kv_heads][n]` from `ws`; sinks 0, protected).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    check_inputs(kv, queries);
    // Keys and values must be finite at every token, as `require_finite` checks them; here
    // without a pass of its own over the cache (one more read of every key and value):
    // the non-sink keys through their expected logits (a NaN or inf in a key makes them
    // non-finite), the sinks' keys and values directly, the other values in the ‖v‖ pass (or a
    // values pass without use_vnorm). Any finding, and any other failure after this point, first
    // runs the whole-cache check, so the error names the first non-finite element exactly as
    // the check before the scoring did.
    detail::require_finite_scales(kv);
    const auto whole_check = [&] { detail::require_finite(kv, /*keys=*/true, /*values=*/true); };
    if (!params_.use_vnorm) {
      try {
        detail::require_finite(kv, /*keys=*/false, /*values=*/true);
      } catch (const error&) {
        whole_check();  // a non-finite key comes first
        throw;
      }
    }
    {
      std::vector<float> row(static_cast<std::size_t>(std::max(kv.head_dim(), kv.head_dim_v())));
      for (index_t h = 0; h < kv.kv_heads(); ++h)
        for (index_t t = 0; t < std::min(params_.n_sink, kv.tokens()); ++t)
          for (const Tensor which : {Tensor::keys, Tensor::values}) {
            kv.read(which, h, t, row.data());
            const index_t len = which == Tensor::keys ? kv.head_dim() : kv.head_dim_v();
            for (index_t e = 0; e < len; ++e)
              if (!std::isfinite(row[static_cast<std::size_t>(e)])) whole_check();
          }
    }
    const index_t n = kv.tokens(), d = kv.head_dim(), half = d / 2, w = queries.window();
    const index_t q_heads = queries.q_heads(), g = q_heads / kv.kv_heads(), sinks = params_.n_sink;
    const index_t first = std::max(n - w, sinks);  // first query position in the statistics
    const index_t count = n - first;
    const auto out = ws.take<float>(kv.kv_heads() * n);
    std::fill(out.begin(), out.end(), 0.0f);
    Workspace::Frame frame(ws);
    // R̄ = mean over the future positions of R_t (per frequency θ_i: mean cos, mean sin)
    std::vector<double> theta, cbar(static_cast<std::size_t>(half)), sbar(cbar.size()),
        ct(cbar.size()), st(cbar.size());
    detail::rope_frequencies({.base = params_.rope_base}, d, theta);
    for (index_t t = n; t < n + params_.n_future; ++t) {
      detail::rope_angles(theta, static_cast<double>(t), ct.data(), st.data());
      for (std::size_t i = 0; i < ct.size(); ++i) {
        cbar[i] += ct[i];
        sbar[i] += st[i];
      }
    }
    for (std::size_t i = 0; i < cbar.size(); ++i) {
      cbar[i] /= static_cast<double>(params_.n_future);
      sbar[i] /= static_cast<double>(params_.n_future);
    }
    std::vector<double> q(static_cast<std::size_t>(d)), mu(q.size()), mu2(q.size()), k(q.size());
    std::vector<float> vrow(static_cast<std::size_t>(kv.head_dim_v()));
    const auto rotate_pairs = [&](std::vector<double>& x, std::span<const double> c,
                                  std::span<const double> sn) {
      detail::rotate_pairs(x.data(), params_.rope_style, half, c.data(), sn.data());
    };
    // Per query head of a KV group, the columns of B (d × g·cols, float): μ' = R̄μ, then with
    // use_covariance the N − 1 rotated folded queries y_j = R̄z_j. Σ' = R̄ΣR̄ᵀ with
    // Σ = (1/N) Σ_j z_j z_jᵀ, so kᵀΣ'k = (1/N) Σ_j (y_j·k)²: the logits of all g heads come from
    // one GEMM K·B over the group's keys (tokens × g·cols), never from a d × d form per token.
    const index_t cols = 1 + (params_.use_covariance ? count - 1 : 0);
    const index_t block = std::min<index_t>(1024, n - sinks);
    const auto bmat = ws.take<float>(d * g * cols);
    const auto kblock = ws.take<float>(block * d);
    const auto pblock = ws.take<float>(block * g * cols);
    const index_t ld = (g * cols + 31) / 32 * 32;  // Bᵀ's padded rows for the logits kernel
    const auto bt = ws.take<float>(detail::has_logits_kernel ? ld * d : 0);
    // the kernel's row maxima and finiteness checks (unused here: the logits are checked below)
    const auto pmax = ws.take<float>(detail::has_logits_kernel ? ld : 0);
    const auto pcheck = ws.take<float>(detail::has_logits_kernel ? ld : 0);
    const auto logit = ws.take<double>(g * n);  // the group's expected logits, then exponentials
    std::vector<double> cpos(theta.size()), spos(theta.size()),
        pre(static_cast<std::size_t>(count * d));
    using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    for (index_t kvh = 0; kvh < kv.kv_heads(); ++kvh) {
      for (index_t hh = 0; hh < g; ++hh) {
        const index_t h = kvh * g + hh;
        // pre-RoPE statistics of this head's queries after the sinks
        std::fill(mu.begin(), mu.end(), 0.0);
        for (index_t j = 0; j < count; ++j) {
          const index_t pos = first + j;
          const auto qq = queries.query(h, pos - (n - w));
          for (index_t e = 0; e < d; ++e)
            q[static_cast<std::size_t>(e)] = to_float(qq[static_cast<std::size_t>(e)]);
          detail::rope_angles(theta, -static_cast<double>(pos), cpos.data(),
                              spos.data());  // R(−pos)
          rotate_pairs(q, cpos, spos);
          for (index_t e = 0; e < d; ++e) {
            if (!std::isfinite(q[static_cast<std::size_t>(e)])) {
              whole_check();
              detail::fail("queries", "finite values", "a non-finite query at head ", h,
                           ", position ", pos);
            }
            pre[static_cast<std::size_t>(j * d + e)] = q[static_cast<std::size_t>(e)];
            mu[static_cast<std::size_t>(e)] +=
                q[static_cast<std::size_t>(e)] / static_cast<double>(count);
          }
        }
        float* const col = bmat.data() + hh * cols * d;
        mu2 = mu;
        rotate_pairs(mu2, cbar, sbar);
        for (index_t e = 0; e < d; ++e)
          col[e] = static_cast<float>(mu2[static_cast<std::size_t>(e)]);
        // z_j = x_j + x_last / (√N − 1), j < N − 1, with x_j = q_j − μ (see the class comment)
        const double fold = count > 1 ? 1.0 / (std::sqrt(static_cast<double>(count)) - 1.0) : 0.0;
        const auto centred = [&](index_t j, index_t e) {
          return pre[static_cast<std::size_t>(j * d + e)] - mu[static_cast<std::size_t>(e)];
        };
        for (index_t j = 0; j + 1 < cols; ++j) {
          for (index_t e = 0; e < d; ++e)
            k[static_cast<std::size_t>(e)] = centred(j, e) + fold * centred(count - 1, e);
          rotate_pairs(k, cbar, sbar);
          for (index_t e = 0; e < d; ++e)
            col[(1 + j) * d + e] = static_cast<float>(k[static_cast<std::size_t>(e)]);
        }
      }
      // expected logits of the non-sink keys, block by block: one GEMM for the g heads — on
      // AVX-512 targets window_attention's logits kernel (Bᵀ transposed once per group),
      // else Eigen's; either way P token-major (P[t · g·cols + c]).
      const Eigen::Map<const Eigen::MatrixXf> B(bmat.data(), d, g * cols);
      const index_t pr = g * cols;
      const bool own = detail::has_logits_kernel && pr >= 16;
      if (own) {
        std::fill(bt.begin(), bt.end(), 0.0f);
        std::fill(pmax.begin(), pmax.end(), 0.0f);
        std::fill(pcheck.begin(), pcheck.end(), 0.0f);
        for (index_t c = 0; c < pr; ++c)
          for (index_t e = 0; e < d; ++e) bt[static_cast<std::size_t>(e * ld + c)] = B(e, c);
      }
      for (index_t b0 = sinks; b0 < n; b0 += block) {
        const index_t len = std::min(block, n - b0);
        // the block's keys as contiguous float rows (kv.read converts and dequantizes)
        for (index_t t = 0; t < len; ++t) kv.read(Tensor::keys, kvh, b0 + t, kblock.data() + t * d);
        if (own) {
          detail::logits_block(bt.data(), ld, pr, kblock.data(), d, len, d, pblock.data(),
                               pmax.data(), pcheck.data());
        } else {
          const Eigen::Map<const RowMajorF> K(kblock.data(), len, d);
          Eigen::Map<RowMajorF>(pblock.data(), len, pr).noalias() = K * B;
        }
        for (index_t hh = 0; hh < g; ++hh) {
          double* const lg = logit.data() + hh * n + b0;
          for (index_t t = 0; t < len; ++t) {
            const float* const prod = pblock.data() + t * pr + hh * cols;  // μ'·k, then y_j·k
            const double quad =
                kernels::squared_norm({prod + 1, static_cast<std::size_t>(cols - 1)});
            lg[t] = static_cast<double>(prod[0]) / std::sqrt(static_cast<double>(d)) +
                    quad / static_cast<double>(count) / (2.0 * static_cast<double>(d));
            if (!std::isfinite(lg[t])) {  // a non-finite key, else an overflow of finite ones
              whole_check();
              detail::fail("keys", "finite expected logits", "an overflow to inf at KV head ", kvh,
                           ", token ", b0 + t, " (finite but huge keys and queries)");
            }
          }
        }
      }
      // softmax over the non-sink keys per query head, added to the group's mean
      for (index_t hh = 0; hh < g; ++hh) {
        double* const lg = logit.data() + hh * n;
        double max = -INFINITY;
        for (index_t t = sinks; t < n; ++t) max = std::max(max, lg[t]);
        double sum = 0;
        for (index_t t = sinks; t < n; ++t) sum += lg[t] = std::exp(lg[t] - max);
        for (index_t t = sinks; t < n; ++t)
          out[static_cast<std::size_t>(kvh * n + t)] +=
              static_cast<float>(lg[t] / sum / static_cast<double>(g));
      }
    }
    if (params_.use_vnorm)
      for (index_t h = 0; h < kv.kv_heads(); ++h)
        for (index_t t = sinks; t < n; ++t) {
          kv.read(Tensor::values, h, t, vrow.data());
          const double s2 = kernels::squared_norm(vrow);
          if (!std::isfinite(s2)) whole_check();  // a non-finite value (or a key before it)
          float& o = out[static_cast<std::size_t>(h * n + t)];
          o = static_cast<float>((static_cast<double>(o) + params_.epsilon) * std::sqrt(s2));
        }
    Scores scores = Scores::of_kv_heads(out, kv);
    scores.protect = protect(n);
    return scores;
  }
};

}  // namespace kvevict
