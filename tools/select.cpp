// `kvevict list` and `kvevict select`.
// SPDX-License-Identifier: Apache-2.0
#include <cstdio>

#include "cli.hpp"

namespace kvevict::cli {

int list() {
  for_each_policy([]<class P>() {
    const typename P::Params defaults;
    std::printf("%-14s %s\n", std::string(P::name).c_str(), std::string(P::info.summary).c_str());
    std::printf("%-14s forms: one-shot%s%s\n", "", P::info.streaming ? ", streaming" : "",
                P::info.budget_free ? " (budget-free)" : "");
    for (const auto& f : P::parameters()) {
      std::string value = f.get(defaults);
      if (value.size() >= 2 && value.front() == '"') value = value.substr(1, value.size() - 2);
      std::printf("%-14s   %-18s %-10s %s%s%s\n", "", std::string(f.name).c_str(), value.c_str(),
                  std::string(f.doc).c_str(), f.range.empty() ? "" : "; ",
                  std::string(f.range).c_str());
    }
  });
  return 0;
}

int select(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--shared"});
  args.allow({"--policy", "--keys", "--values", "--queries", "--wo", "--budget", "--ratio", "--set",
              "--seed", "--shared", "--granularity", "--out", "--kv-format", "--threads"});
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
  if (format == eval::KVFormat::none) {
    in.with_views([&](const auto& kv, const auto& queries) {
      kvevict::select(policy, kv, queries, b, sel, ws);
    });
  } else {  // the inputs stored as the engine would, selected with fp32 queries
    const QueryWindow<float> queries(in.qf().data(), in.q_heads, in.w, in.d);
    eval::with_format(
        format, in.kf().data(), in.vf().data(), in.kv_heads, in.n, in.d, in.dv,
        [&](const auto& stored) { kvevict::select(policy, stored.view(), queries, b, sel, ws); });
  }

  Json j;
  j.raw("{").key("policy").str(name_of(policy)).raw(", ").key("params");
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
