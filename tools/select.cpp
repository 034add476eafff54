// `kvevict list` and `kvevict select`.
// SPDX-License-Identifier: Apache-2.0
#include <cstdio>

#include "cli.hpp"

namespace kvevict::cli {

/// `kvevict list`: every registered policy and its parameters, from the policies' own metadata
/// (an enum lists the values the policy's validation accepts).
int list() {
  for (const PolicyEntry* e : policy_entries()) {
    std::printf("%-14s %s\n", std::string(e->name).c_str(), std::string(e->info->summary).c_str());
    std::printf("%-14s forms: one-shot%s%s\n", "", e->info->streaming ? ", streaming" : "",
                e->info->budget_free ? " (budget-free)" : "");
    for (const ParameterInfo& p : e->parameters) {
      std::string value = p.default_value;
      if (value.size() >= 2 && value.front() == '"') value = value.substr(1, value.size() - 2);
      std::string accepts = p.range;
      if (!p.values.empty()) {
        accepts = "one of ";
        for (std::size_t i = 0; i < p.values.size(); ++i) accepts += (i ? ", " : "") + p.values[i];
      }
      std::printf("%-14s   %-18s %-10s %s%s%s\n", "", p.name.c_str(), value.c_str(), p.doc.c_str(),
                  accepts.empty() ? "" : "; ", accepts.c_str());
    }
  }
  return 0;
}

int select(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--shared"});
  args.allow({"--policy", "--keys", "--values", "--queries", "--wo", "--budget", "--ratio", "--set",
              "--seed", "--shared", "--granularity", "--page-size", "--out", "--kv-format",
              "--threads"});
  const eval::KVFormat format = eval::parse_kv_format(args.get("--kv-format", "none"));
  if (args.has("--out")) check_writable("--out", args.get("--out"));
  Inputs in(args, "[q_heads, w, d]");
  npy::Array wo_array;
  const auto wo = output_projection(args, wo_array, in);
  const AnyPolicy policy = policy_from(args, wo ? &*wo : nullptr);
  const Budget b = budget(args, budget_free(policy));
  if (in.w > in.n)
    fail("queries", cat("a window of at most n (", in.n, ") queries"), shape_text(in.q));

  Selection sel;
  Workspace ws;
  // --threads N: a ThreadExecutor of N workers scores KV heads in parallel (same selection).
  const index_t threads = parse_count("--threads", args.get("--threads", "1"));
  if (threads < 1) fail("--threads", "at least 1 thread", threads);
  const ThreadExecutor executor(threads);
  if (threads > 1) ws.set_executor(&executor);
  // --page-size P: with granularity pages, whole pages of P tokens of the (dense) input are
  // kept or dropped, as a paged engine frees them.
  const bool pages = policy.granularity() == Granularity::pages;
  if (args.has("--page-size") && !pages)
    fail("--page-size", "--granularity pages (or a policy set to pages)",
         to_string(policy.granularity()));
  const index_t page = pages ? parse_count("--page-size", args.get("--page-size", "16")) : 0;
  if (pages && page < 1) fail("--page-size", "at least 1 token per page", page);
  if (pages && format != eval::KVFormat::none)
    fail("--kv-format", "a policy whose unit is not pages (the stored cache is dense)", "pages");
  if (format == eval::KVFormat::none) {
    in.with_views([&](const auto& kv, const auto& queries) {
      if (!pages || !policy.reads_scores()) return policy.select(kv, queries, b, sel, ws);
      Workspace::Frame frame(ws);
      policy.choose(policy.score(kv, queries, Granularity::pages, ws), b, sel, ws, page);
    });
  } else {  // the inputs stored as the engine would, selected with fp32 queries
    const QueryWindow<float> queries(in.qf().data(), in.q_heads, in.w, in.d);
    eval::with_format(
        format, in.kf().data(), in.vf().data(), in.kv_heads, in.n, in.d, in.dv,
        [&](const auto& stored) { policy.select(stored.view(), queries, b, sel, ws); });
  }

  Json j;
  j.raw("{").key("policy").str(policy.name()).raw(", ").key("params");
  params_json(j, policy);
  j.raw(", ").key("n").raw(std::to_string(in.n)).raw(", ");
  j.key("budget").raw(b.is_none() ? "null" : std::to_string(std::min(b.resolve(in.n), in.n)));
  j.raw(", ");
  if (format != eval::KVFormat::none) j.key("kv_format").str(eval::to_string(format)).raw(", ");
  j.key("shared").raw(sel.shared() ? "true" : "false").raw(", ").key("kept").raw("[");
  for (index_t h = 0; h < in.kv_heads; ++h) j.raw(h ? ", " : "").list(sel.kept(h));
  j.raw("]}\n");
  emit(args, j.text());
  return 0;
}

}  // namespace kvevict::cli
