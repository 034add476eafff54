// `kvevict list` and `kvevict select`.
// SPDX-License-Identifier: Apache-2.0
#include <cstdio>

#include "cli.hpp"

namespace kvevict::cli {

int list() {
  eval::for_each_policy([]<class P>() {
    using Traits = eval::PolicyTraits<P>;
    const typename P::Params defaults;
    std::printf("%-14s %s\n", std::string(P::name).c_str(), std::string(Traits::summary).c_str());
    std::printf("%-14s forms: one-shot%s\n", "", StreamingPolicy<P, float> ? ", streaming" : "");
    for (const auto& f : Traits::fields()) {
      std::string value = eval::detail::json_value(defaults, f);
      if (value.size() >= 2 && value.front() == '"') value = value.substr(1, value.size() - 2);
      std::printf("%-14s   %-18s %-10s %s\n", "", std::string(f.name).c_str(), value.c_str(),
                  std::string(f.help).c_str());
    }
    if constexpr (requires { defaults.seed; })
      std::printf("%-14s   %-18s %-10s %s\n", "", "(--seed)", "0", "random stream seed");
    if constexpr (requires { defaults.shared; })
      std::printf("%-14s   %-18s %-10s %s\n", "", "(--shared)", defaults.shared ? "1" : "0",
                  "one set for all KV heads");
  });
  return 0;
}

int select(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--shared"});
  args.allow({"--policy", "--keys", "--values", "--queries", "--wo", "--budget", "--ratio", "--set",
              "--seed", "--shared", "--out"});
  if (args.has("--out")) check_writable("--out", args.get("--out"));
  const auto s = settings(args);
  Inputs in(args, "[q_heads, w, d]");
  npy::Array wo_array;
  const auto wo = output_projection(args, wo_array, in);
  const eval::AnyPolicy policy = eval::make_policy(args.get("--policy"), s, seed(args),
                                                   args.has("--shared"), wo ? &*wo : nullptr);
  const Budget b = budget(args, eval::budget_free(policy));
  if (in.w > in.n)
    fail("queries", cat("a window of at most n (", in.n, ") queries"), shape_text(in.q));

  Selection sel;
  Workspace ws;
  in.with_views(
      [&](const auto& kv, const auto& queries) { eval::select(policy, kv, queries, b, sel, ws); });

  Json j;
  j.raw("{").key("policy").str(eval::name_of(policy)).raw(", ").key("params");
  params_json(j, policy);
  j.raw(", ").key("n").raw(std::to_string(in.n)).raw(", ");
  j.key("budget").raw(b.is_none() ? "null" : std::to_string(std::min(b.resolve(in.n), in.n)));
  j.raw(", ");
  j.key("shared").raw(sel.shared() ? "true" : "false").raw(", ").key("kept").raw("[");
  for (index_t h = 0; h < in.kv_heads; ++h) j.raw(h ? ", " : "").list(sel.kept(h));
  j.raw("]}\n");
  emit(args, j.text());
  return 0;
}

}  // namespace kvevict::cli
