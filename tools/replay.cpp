// `kvevict replay`: token-by-token decode over recorded Q/K/V.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/replay.hpp>

#include "cli.hpp"

namespace kvevict::cli {

int replay(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--shared"});
  args.allow({"--policy", "--keys", "--values", "--queries", "--wo", "--budget", "--set", "--seed",
              "--shared", "--granularity", "--window", "--every", "--out"});
  if (args.has("--out")) check_writable("--out", args.get("--out"));
  std::optional<index_t> budget;
  if (args.has("--budget")) budget = parse_count("--budget", args.get("--budget"));
  const index_t window = parse_count("--window", args.get("--window", "32"));
  const index_t every = parse_count("--every", args.get("--every", "1"));
  Inputs in(args, "[q_heads, n, d]");
  npy::Array wo_array;
  const auto wo = output_projection(args, wo_array, in);
  const AnyPolicy policy = policy_from(args, wo ? &*wo : nullptr);
  if (in.w != in.n)
    fail("queries", cat("one query per position: [q_heads, ", in.n, ", ", in.d, "]"),
         shape_text(in.q));
  // the replay computes in fp32 (float16 → float32 is exact)
  const eval::DecodeTrace trace{in.kf().data(), in.vf().data(), in.qf().data(), in.kv_heads,
                                in.q_heads,     in.n,           in.d,           in.dv};
  const eval::ReplayResult r =
      eval::replay(policy, trace, budget, {.window = window, .every = every});

  Json j;
  j.raw("{").key("policy").str(name_of(policy)).raw(", ").key("params");
  params_json(j, policy);
  j.raw(", ").key("n").raw(std::to_string(in.n)).raw(", ").key("budget");
  j.raw(budget ? std::to_string(*budget) : "null").raw(", ");
  j.key("every").raw(std::to_string(every)).raw(", ");
  j.key("error").raw("{").key("mean").raw(cat(r.mean_error)).raw(", ").key("max");
  j.raw(cat(r.max_error)).raw("}, ");
  j.key("mean_live")
      .raw(cat(r.mean_live))
      .raw(", ")
      .key("max_live")
      .raw(std::to_string(r.max_live));
  j.raw(", ").key("kept").raw("[");
  for (std::size_t h = 0; h < r.kept.size(); ++h) j.raw(h ? ", " : "").list(r.kept[h]);
  j.raw("], ").key("step_error").list(r.step_error).raw("}\n");
  emit(args, j.text());
  return 0;
}

}  // namespace kvevict::cli
