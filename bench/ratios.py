#!/usr/bin/env python3
"""Prints the ratios the issues ask for from a Google Benchmark JSON file (standard library only).

usage: bench/ratios.py build/release/bench.json

With --benchmark_repetitions, every figure is the median over the repetitions.
"""
import json
import statistics
import sys

KEYS = ("real_time", "FLOPS", "bytes_per_second", "s_per_token")


def load(path):
    reps = {}
    for b in json.load(open(path))["benchmarks"]:
        if b.get("run_type") != "aggregate":
            reps.setdefault(b.get("run_name", b["name"]), []).append(b)
    return {name: {k: statistics.median(r[k] for r in rs) for k in KEYS if k in rs[0]}
            for name, rs in reps.items()}


def main(path):
    runs = load(path)

    def find(name, key):  # the exact name, or the run it starts ("…/iterations:1")
        for n in [name] + [n for n in runs if n.startswith(name + "/")]:
            if n in runs and key in runs[n]:
                return runs[n][key]
        return None

    time = lambda name: find(name, "real_time")
    gemm, copy = find("BM_Ceiling_Sgemm1024", "FLOPS"), find("BM_Ceiling_Memcpy", "bytes_per_second")
    print("ceilings:", f"sgemm {gemm / 1e9:.1f} GFLOP/s" if gemm else "no sgemm",
          f"memcpy {copy / 1e9:.2f} GB/s" if copy else "no memcpy")
    for name in sorted(runs):
        r = runs[name]
        if "FLOPS" in r and gemm and name != "BM_Ceiling_Sgemm1024":
            print(f"{name:38s} {r['FLOPS'] / 1e9:7.1f} GFLOP/s = {r['FLOPS'] / gemm:6.1%} of sgemm")
        elif "bytes_per_second" in r and copy and name != "BM_Ceiling_Memcpy":
            print(f"{name:38s} {r['bytes_per_second'] / 1e9:7.2f} GB/s    = "
                  f"{r['bytes_per_second'] / copy:6.1%} of memcpy")
    one, two = time("BM_Score_Window/32768"), time("BM_Score_Window_2Threads/32768")
    if one and two:
        print(f"scoring at n=32768 with a 2-worker executor: {one / two:.2f}x the serial speed "
              "(wall time)")
    for n in (4096, 32768):
        select, score = time(f"BM_SnapKV_PoolSelect/{n}"), time(f"BM_Score_Window/{n}")
        if select and score:
            print(f"pooling + selection / scoring at n={n}: {select / score:.1%}")
    select, choose = time("BM_NACL_Select/32768"), time("BM_NACL_Choose/32768")
    if select and choose:
        print(f"NACL selection (top-k + sampling) / whole select at n=32768: {choose / select:.1%}")
    l1, l2 = time("BM_CriticalKV_Norm_L1/32768"), time("BM_CriticalKV_Norm_L2/32768")
    if l1 and l2:
        print(f"CriticalKV norm: L2 (Gram) is {l1 / l2:.1f}x faster than L1 (hidden/d = 32)")
    per_token = {int(name.split("/")[1]): r["s_per_token"] for name, r in runs.items()
                 if name.startswith("BM_Cascade_Prefill/") and "s_per_token" in r}
    if per_token:
        lo, hi = min(per_token.values()), max(per_token.values())
        steps = ", ".join(f"{n // 1024}K {t * 1e6:.1f} us" for n, t in sorted(per_token.items()))
        print(f"Cascade prefill time per token: {steps}; max/min = {hi / lo:.2f}")
    for n in (4096, 32768):
        attention = time(f"BM_Attention_Step/{n}")
        for policy in ("H2O", "TOVA", "StreamingLLM", "CORM"):
            step = time(f"BM_Step_{policy}/{n}")
            if step and attention:
                print(f"{policy} step / attention step at n={n}: {step / attention:.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/release/bench.json")
