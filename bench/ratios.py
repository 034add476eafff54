#!/usr/bin/env python3
"""Prints the ratios the issues ask for from a Google Benchmark JSON file (standard library only).

usage: bench/ratios.py build/release/bench.json
"""
import json
import statistics
import sys


def main(path):
    """With --benchmark_repetitions, every figure is the median over the repetitions."""
    reps = {}
    for b in json.load(open(path))["benchmarks"]:
        if b.get("run_type") != "aggregate":
            reps.setdefault(b.get("run_name", b["name"]), []).append(b)
    runs = {}
    for name, rs in reps.items():
        runs[name] = {k: statistics.median(r[k] for r in rs) for k in ("real_time", "FLOPS", "bytes_per_second") if k in rs[0]}
    def find(name, key):  # exact name, or the run it starts (e.g. "…/iterations:1")
        for n in [name] + [n for n in runs if n.startswith(name + "/")]:
            if n in runs and key in runs[n]:
                return runs[n][key]
        return None
    flops = lambda name: find(name, "FLOPS")
    bps = lambda name: find(name, "bytes_per_second")
    time = lambda name: find(name, "real_time")
    gemm, copy = flops("BM_Ceiling_Sgemm1024"), bps("BM_Ceiling_Memcpy")
    print("ceilings:", f"sgemm {gemm / 1e9:.1f} GFLOP/s" if gemm else "no sgemm",
          f"memcpy {copy / 1e9:.2f} GB/s" if copy else "no memcpy")
    for name in sorted(runs):
        r = runs[name]
        if "FLOPS" in r and gemm and name != "BM_Ceiling_Sgemm1024":
            print(f"{name:34s} {r['FLOPS'] / 1e9:7.1f} GFLOP/s = {r['FLOPS'] / gemm:6.1%} of sgemm")
        elif "bytes_per_second" in r and copy and name != "BM_Ceiling_Memcpy":
            print(f"{name:34s} {r['bytes_per_second'] / 1e9:7.2f} GB/s    = {r['bytes_per_second'] / copy:6.1%} of memcpy")
    select, choose = time("BM_NACL_Select/32768"), time("BM_NACL_Choose/32768")
    if select and choose:
        print(f"NACL selection (top-k + sampling) / whole select at n=32768: {choose / select:.1%}")
    l1, l2 = time("BM_CriticalKV_Norm_L1/32768"), time("BM_CriticalKV_Norm_L2/32768")
    if l1 and l2:
        print(f"CriticalKV norm: L2 (Gram) is {l1 / l2:.1f}x faster than L1 (hidden/d = 32)")
    for n in (4096, 32768):
        select, score = time(f"BM_SnapKV_PoolSelect/{n}"), time(f"BM_Score_Window/{n}")
        if select and score:
            print(f"pooling + selection / scoring at n={n}: {select / score:.1%}")
        attention = time(f"BM_Attention_Step/{n}")
        for policy in ("H2O", "TOVA", "StreamingLLM", "CORM"):
            step = time(f"BM_Step_{policy}/{n}")
            if step and attention:
                print(f"{policy} step / attention step at n={n}: {step / attention:.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/release/bench.json")
