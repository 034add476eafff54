// kvevict: run KV-cache eviction policies on real Q/K/V dumps or built-in workloads.
// SPDX-License-Identifier: Apache-2.0
#include <cstdio>
#include <exception>
#include <string>

#include "cli.hpp"

namespace {

constexpr const char* usage =
    "usage:\n"
    "  kvevict list                                   policies, parameters, defaults\n"
    "  kvevict select --policy SPEC --keys K.npy --values V.npy --queries Q.npy [--wo WO.npy]\n"
    "                 (--budget N | --ratio R) [--set key=value]... [--seed S]\n"
    "                 [--granularity G [--page-size P]] [--kv-format F] [--threads N]\n"
    "                 [--out OUT.json]\n"
    "  kvevict replay --policy SPEC --keys K.npy --values V.npy --queries Q.npy [--wo WO.npy]\n"
    "                 [--budget N]\n"
    "                 [--set key=value]... [--seed S] [--shared] [--window W] [--every N]\n"
    "                 [--out OUT.json]\n"
    "  kvevict eval   [--workload NAME,… [--workload-set knob=value]… |\n"
    "                  --keys K.npy --values V.npy --queries Q.npy [--wo WO.npy] [--future F]]\n"
    "                 [--policies a,b,…] [--ratios 0.1,0.2,0.3 | --budgets 256,512]\n"
    "                 [--mode one-shot|replay] [--window W] [--set policy.key=value]… [--seed S]\n"
    "                 [--kv-format F] [--csv FILE] [--plot FILE.svg] [--per-head FILE.csv]\n"
    "  kvevict demo   [--out-dir DIR]                 every policy on the default workload\n"
    "\n"
    "SPEC: a policy name and its settings, as the library parses them: snapkv:window=16,pool=avg\n"
    "(kvevict list shows every policy's parameters). G: per_head, equal, shared, layers, pages.\n"
    "Arrays: C-order little-endian float32 or float16 .npy; K, V [kv_heads, n, d];\n"
    "select: Q [q_heads, w, d], the queries of positions n-w … n-1.\n"
    "replay: Q [q_heads, n, d], the query of every position.\n"
    "WO [q_heads, d_v, hidden]: each head's slice of the output projection (criticalkv).\n"
    "--kv-format q8_0|q4_0|fp8_e4m3|fp8_e5m2|int8: select on K, V stored in that cache format\n"
    "(ggml blocks; fp8 with a per-tensor scale; int8 with a per-token scale); eval adds the\n"
    "agreement with the fp32 selection.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
  const std::string command = argv[1];
  try {
    if (command == "list") return kvevict::cli::list();
    if (command == "select") return kvevict::cli::select(argc, argv);
    if (command == "replay") return kvevict::cli::replay(argc, argv);
    if (command == "eval") return kvevict::cli::eval_command(argc, argv);
    if (command == "demo") return kvevict::cli::demo(argc, argv);
    std::fprintf(stderr,
                 "kvevict: command: expected list, select, replay, eval or demo, got '%s'\n",
                 command.c_str());
    return 2;
  } catch (const kvevict::error& e) {
    std::fprintf(stderr, "kvevict: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvevict: error: %s\n", e.what());
    return 1;
  }
}
