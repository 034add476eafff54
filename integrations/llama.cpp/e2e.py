#!/usr/bin/python3
"""kvevict end to end: what each policy does to a real model's answers and perplexity, inside
llama.cpp, on the tiny model (models/tiny/tiny.gguf) and the Brown corpus's test split.

    /usr/bin/python3 integrations/llama.cpp/e2e.py --bin BUILD --out DIR [--cache DIR]
        [--model models/tiny/tiny.gguf] [--keys 10] [--stream-keys 2] [--threads 2]

BUILD is a build tree of the `llama` preset (it holds integrations/llama.cpp/kvevict-llama and
tools/kvevict). Debian's python3 with python3-numpy and python3-sentencepiece (the corpus is
fetched with npm into --cache). Writes into DIR: passkey.csv, ppl.csv, continuation.csv,
attention.csv (+ synthetic.csv), e2e.md (the tables the README shows) and e2e.svg.

1. Passkey retrieval (the NACL / CriticalKV / SnapKV needle setting): lengths 1024 and 2048,
   depths 0–100% in 10% steps, --keys held-out keys each; ratios 10/20/30/50%; the question
   inside the compressed prompt, and after it (compress the context, then decode the question).
   Every one-shot policy after prefill; the streaming ones over the prompt token by token on
   --stream-keys keys per cell (token-by-token decoding costs ~1000× a one-shot selection), with
   the question inside only: a stream evicts as every token arrives, so "after compression" is
   the same run for it.
2. Perplexity under a cache budget (the StreamingLLM / H2O / Cascade LM setting): test documents
   concatenated (≥ 8K tokens), scored token by token with caches of 128/256/512/1024 under each
   streaming policy (CORM is budget-free: its mean cache is reported), against the full-context
   reference by sliding windows of 2048 tokens (stride 256), as the StreamingLLM paper does.
3. Compression, then continuation: windows of 1792 prompt tokens compressed at 10–50% by every
   one-shot policy, perplexity of the next 256 tokens.
4. Real attention against the synthetic workloads: every layer of a 2048-token test prompt
   dumped and run through `kvevict eval`, next to the synthetic `default` workload.
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TINY = os.path.join(ROOT, "models", "tiny")
sys.path.insert(0, TINY)

RATIOS = "0.1,0.2,0.3,0.5"
STREAMING = ["streaming_llm", "h2o", "tova", "cascade", "corm", "random"]
CACHES = [128, 256, 512, 1024]


def run(cmd, log):
    t0 = time.time()
    print("+ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    log.write(f"$ {' '.join(cmd)}\n{out}\n[{time.time() - t0:.1f} s]\n\n")
    log.flush()
    return out, time.time() - t0


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def svg(panels, path):
    """Line plots, one panel per (title, x label, y label, {series: [(x, y)]}, x as %)."""
    W, H, pad = 420, 300, 50
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
              "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a",
              "#ff9896", "#c5b0d5"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(panels)}" height="{H + 160}"'
           ' font-family="sans-serif" font-size="11">']
    names = sorted({n for p in panels for n in p[3]})
    for i, (title, xl, yl, series, logx) in enumerate(panels):
        x0 = i * W + pad
        xs = [x for s in series.values() for x, _ in s]
        ys = [y for s in series.values() for _, y in s]
        lo_x, hi_x = min(xs), max(xs)
        lo_y, hi_y = min(0.0, min(ys)), max(ys) * 1.05 or 1.0

        def px(x):
            if logx:
                return x0 + (math.log(x) - math.log(lo_x)) / (math.log(hi_x) - math.log(lo_x) or 1) * (W - 2 * pad)
            return x0 + (x - lo_x) / ((hi_x - lo_x) or 1) * (W - 2 * pad)

        def py(y):
            return 30 + (1 - (y - lo_y) / ((hi_y - lo_y) or 1)) * (H - 60)

        out.append(f'<text x="{x0 + (W - 2 * pad) / 2}" y="18" text-anchor="middle" '
                   f'font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0}" y="30" width="{W - 2 * pad}" height="{H - 60}" fill="none" '
                   'stroke="#888"/>')
        for k in range(5):
            y = lo_y + (hi_y - lo_y) * k / 4
            out.append(f'<text x="{x0 - 4}" y="{py(y) + 4}" text-anchor="end">{y:.3g}</text>')
        for x in sorted(set(xs)):
            out.append(f'<text x="{px(x)}" y="{H - 16}" text-anchor="middle">{x:g}</text>')
        out.append(f'<text x="{x0 + (W - 2 * pad) / 2}" y="{H}" text-anchor="middle">{xl}</text>')
        out.append(f'<text x="{x0 - 38}" y="{H / 2}" transform="rotate(-90 {x0 - 38} {H / 2})" '
                   f'text-anchor="middle">{yl}</text>')
        for name, pts in series.items():
            c = colors[names.index(name) % len(colors)]
            pts = sorted(pts)
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
    for j, name in enumerate(names):
        c = colors[j % len(colors)]
        x, y = 20 + (j % 6) * 200, H + 30 + (j // 6) * 18
        out.append(f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{c}"/>'
                   f'<text x="{x + 16}" y="{y}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="a build tree of the llama preset")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--model", default=os.path.join(TINY, "tiny.gguf"))
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--stream-keys", type=int, default=2)
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=4, help="continuation windows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--policies", default=None, help="one-shot policies (default: every one)")
    ap.add_argument("--streaming", default=",".join(STREAMING),
                    help="streaming policies for the passkey (over the prompt) and ppl parts")
    ap.add_argument("--skip", default="",
                    help="parts to skip: passkey,stream,ppl,continuation,shift,timing,attention")
    args = ap.parse_args()
    llama = os.path.join(args.bin, "integrations", "llama.cpp", "kvevict-llama")
    kvevict = os.path.join(args.bin, "tools", "kvevict")
    os.makedirs(args.out, exist_ok=True)
    skip = set(args.skip.split(","))
    log = open(os.path.join(args.out, "e2e.log"), "a")
    th = ["--threads", str(args.threads)]
    timing = {}
    prompts = os.path.join(args.out, "prompts")
    cache = ["--cache", args.cache] if args.cache else []
    if not os.path.exists(os.path.join(prompts, "manifest.tsv")):
        run(["/usr/bin/python3", os.path.join(TINY, "passkey.py"), "--out", prompts,
             "--keys", str(max(args.keys, args.stream_keys))] + cache, log)

    one_shot = ["--policies", args.policies] if args.policies else []
    streaming = [p for p in args.streaming.split(",") if p]
    if "passkey" not in skip:
        _, timing["passkey"] = run([llama, "passkey", "--model", args.model, "--prompts", prompts,
                                    "--keys", str(args.keys), "--ratios", RATIOS, "--lengths",
                                    args.lengths, "--csv", os.path.join(args.out, "passkey.csv")]
                                   + one_shot + th, log)
    if "stream" not in skip:
        _, timing["passkey_stream"] = run(
            [llama, "passkey", "--model", args.model, "--prompts", prompts, "--keys",
             str(args.stream_keys), "--ratios", RATIOS, "--lengths", args.lengths,
             "--policies", "", "--streaming",
             ",".join(s for s in streaming if s != "corm"), "--placements", "inside", "--csv",
             os.path.join(args.out, "passkey_stream.csv")] + th, log)

    text = os.path.join(args.out, "test.txt")
    if not os.path.exists(text):
        import data  # models/tiny/data.py
        parts = data.splits(args.cache)["test"]
        with open(text, "w") as f:
            f.write("\n".join(" ".join(sents) for _, sents in parts) + "\n")
    if "ppl" not in skip:
        t0 = time.time()
        with open(os.path.join(args.out, "ppl.csv"), "w") as f:
            f.write("policy,cache,mean_cache,tokens,nll,ppl\n")
            out, _ = run([llama, "ppl", "--model", args.model, "--text-file", text,
                          "--max-tokens", str(args.ppl_tokens)] + th, log)
            r = json.loads(out.strip().splitlines()[-1])
            f.write(f"full (sliding 2048),2048,{r['mean_cache']},{r['tokens']},{r['nll']},"
                    f"{r['ppl']}\n")
            for p in streaming:
                for c in ([1024] if p == "corm" else CACHES):
                    out, _ = run([llama, "ppl", "--model", args.model, "--text-file", text,
                                  "--max-tokens", str(args.ppl_tokens), "--policy", p,
                                  "--budget", str(c)] + th, log)
                    r = json.loads(out.strip().splitlines()[-1])
                    f.write(f"{p},{c},{r['mean_cache']},{r['tokens']},{r['nll']},{r['ppl']}\n")
                    f.flush()
        timing["ppl"] = time.time() - t0
    if "continuation" not in skip:
        _, timing["continuation"] = run(
            [llama, "continuation", "--model", args.model, "--text-file", text, "--windows",
             str(args.windows), "--csv", os.path.join(args.out, "continuation.csv")]
            + one_shot + th, log)
    if "shift" not in skip:  # the same, with the gaps closed (llama.cpp re-rotates the keys)
        _, timing["continuation (shifted)"] = run(
            [llama, "continuation", "--model", args.model, "--text-file", text, "--windows",
             str(args.windows), "--shift-positions", "--csv",
             os.path.join(args.out, "continuation_shift.csv")] + one_shot + th, log)
    if "timing" not in skip:
        # issue 17: kvevict's time for one compression (score every layer, choose, evict)
        # against llama.cpp's prefill of the same 2048-token prompt; median of 3 runs each
        t0 = time.time()
        names = args.policies.split(",") if args.policies else [
            line.split()[0] for line in run([kvevict, "list"], log)[0].splitlines()
            if line and not line[0].isspace()]
        prompt = os.path.join(prompts, "inside-2048-050-0.txt")
        with open(os.path.join(args.out, "timing.csv"), "w") as f:
            f.write("policy,kvevict_ms,prefill_ms\n")
            for p in names:
                runs = []
                for _ in range(3):
                    out, _ = run([llama, "generate", "--model", args.model, "--prompt-file",
                                  prompt, "--n-predict", "1", "--policy", p, "--ratio", "0.2"]
                                 + th, log)
                    m = re.search(r"kvevict ([0-9.]+) ms .*prefill ([0-9.]+) ms", out)
                    runs.append((float(m.group(1)), float(m.group(2))))
                runs.sort()
                f.write(f"{p},{runs[1][0]},{sorted(r[1] for r in runs)[1]}\n")
        timing["timing"] = time.time() - t0
    if "attention" not in skip:
        t0 = time.time()
        real = []
        prompt = os.path.join(prompts, "inside-2048-050-0.txt")
        layers = 0
        while True:
            d = os.path.join(args.out, "dump", f"layer{layers}")
            try:
                run([llama, "dump", "--model", args.model, "--prompt-file", prompt, "--layer",
                     str(layers), "--out", d] + th, log)
            except subprocess.CalledProcessError:
                break
            run([kvevict, "eval", "--keys", f"{d}/keys.npy", "--values", f"{d}/values.npy",
                 "--queries", f"{d}/queries.npy", "--wo", f"{d}/wo.npy", "--ratios", "0.2",
                 "--csv", f"{d}/eval.csv"] + one_shot, log)
            for r in rows(f"{d}/eval.csv"):
                r["layer"] = layers
                real.append(r)
            # CriticalKV's claim, per query head with the model's own W_o (claims.md's command)
            run([kvevict, "eval", "--keys", f"{d}/keys.npy", "--values", f"{d}/values.npy",
                 "--queries", f"{d}/queries.npy", "--wo", f"{d}/wo.npy", "--policies",
                 "snapkv,criticalkv", "--set", "snapkv.window=64", "--set", "snapkv.kernel=5",
                 "--set", "snapkv.pool=avg", "--ratios", "0.1,0.2,0.3", "--per-head",
                 f"{d}/heads.csv"], log)
            layers += 1
        with open(os.path.join(args.out, "attention.csv"), "w") as f:
            w = csv.DictWriter(f, fieldnames=list(real[0].keys()))
            w.writeheader()
            w.writerows(real)
        run([kvevict, "eval", "--workload", "default", "--ratios", "0.2", "--csv",
             os.path.join(args.out, "synthetic.csv")] + one_shot, log)
        timing["attention"] = time.time() - t0
    # parts may run as separate processes into one --out (e.g. the streaming parts on one
    # core, the rest on the other): their times accumulate in timing.json
    path = os.path.join(args.out, "timing.json")
    if timing:
        done = json.load(open(path)) if os.path.exists(path) else {}
        done.update(timing)
        with open(path, "w") as f:
            json.dump(done, f)
    report(args.out, json.load(open(path)) if os.path.exists(path) else {})


def report(out, timing):
    md = []
    panels = []
    path = os.path.join(out, "passkey.csv")
    if os.path.exists(path):
        data = rows(path)
        extra = os.path.join(out, "passkey_stream.csv")
        if os.path.exists(extra):
            data += [r for r in rows(extra) if r["policy"] != "full"]
        acc, kept, length = {}, {}, {}
        for r in data:
            k = (r["policy"] + (" (stream)" if r["mode"] == "stream" else ""), r["placement"],
                 float(r["ratio"]))
            acc.setdefault(k, []).append(int(r["correct"]))
            prompt = (r["placement"], r["length"], r["depth"], r["key"])
            kept.setdefault((k[0], prompt), set()).add(int(r["kept"]))
            if r["policy"] == "full":
                length[prompt] = int(r["kept"])
        ratios = sorted({k[2] for k in acc if k[0] != "full"})
        names = sorted({k[0] for k in acc}, key=lambda n: (n != "full", n))

        def label(n):  # a budget-free policy keeps the same tokens at every ratio: say how many
            sizes = [(v, p) for (m, p), v in kept.items() if m == n]
            if n == "full" or not sizes or any(len(v) > 1 for v, _ in sizes) or len(ratios) < 2:
                return "full cache" if n == "full" else n
            share = sum(next(iter(v)) / length[p] for v, p in sizes if p in length) / len(sizes)
            return f"{n} (budget-free: kept {share:.0%})"

        def cell(n, placement, r):
            v = acc.get((n, placement, 1.0 if n == "full" else r), [])
            return (f"{100 * sum(v) / len(v):.0f}" if v else "–"), len(v)

        md.append("\n**Passkey accuracy** (% of prompts answered exactly; lengths 1024 and 2048, "
                  "needle depths 0–100%, held-out keys; the question inside the compressed "
                  "prompt, or after it; columns: share of the prompt kept)\n")
        md.append("| policy | " + " | ".join(f"inside {r:.0%}" for r in ratios) + " | "
                  + " | ".join(f"after {r:.0%}" for r in ratios) + " | prompts |")
        md.append("|---|" + "---:|" * (2 * len(ratios) + 1))
        for n in names:
            cells = [cell(n, pl, r) for pl in ("inside", "after") for r in ratios]
            md.append(f"| {label(n)} | " + " | ".join(c for c, _ in cells)
                      + f" | {max(c for _, c in cells)} |")
        for placement in ("inside", "after"):
            series = {}
            for n in names:
                for r in ratios:
                    v = acc.get((n, placement, r), [])
                    if v and n != "full":
                        series.setdefault(n, []).append((r * 100, 100 * sum(v) / len(v)))
            panels.append((f"passkey, question {placement}", "cache kept (%)", "accuracy (%)",
                           series, False))
    path = os.path.join(out, "ppl.csv")
    if os.path.exists(path):
        data = rows(path)
        md.append("\n**Perplexity under a cache budget** (test split, token by token)\n")
        caches = sorted({int(r["cache"]) for r in data if not r["policy"].startswith("full")})
        md.append("| policy | " + " | ".join(str(c) for c in caches) + " |")
        md.append("|---|" + "---:|" * len(caches))
        series = {}
        for r in data:
            if r["policy"].startswith("full"):
                md.append(f"| {r['policy']} | " + " | ".join(f"{float(r['ppl']):.2f}" for _ in caches)
                          + " |")
        for p in sorted({r["policy"] for r in data if not r["policy"].startswith("full")}):
            cells = []
            for c in caches:
                m = [r for r in data if r["policy"] == p and int(r["cache"]) == c]
                if m:
                    cells.append(f"{float(m[0]['ppl']):.2f}" + (
                        f" (mean cache {float(m[0]['mean_cache']):.0f})" if p == "corm" else ""))
                    series.setdefault(p, []).append((c, float(m[0]["ppl"])))
                else:
                    cells.append("–")
            md.append(f"| {p} | " + " | ".join(cells) + " |")
        panels.append(("perplexity under a budget", "cache (tokens)", "perplexity", series, True))
    for name, how in (("continuation.csv", "positions kept"),
                      ("continuation_shift.csv", "positions shifted to close the gaps")):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        data = rows(path)
        md.append("\n**Perplexity of the next 256 tokens after compressing a 1792-token prompt** "
                  f"({how})\n")
        ratios = sorted({float(r["ratio"]) for r in data if r["policy"] != "full"})
        md.append("| policy | " + " | ".join(f"{r:.0%}" for r in ratios) + " |")
        md.append("|---|" + "---:|" * len(ratios))
        agg = {}
        for r in data:
            k = (r["policy"], float(r["ratio"]))
            a = agg.setdefault(k, [0.0, 0])
            a[0] += float(r["nll"])
            a[1] += int(r["tokens"])
        full = [v for k, v in agg.items() if k[0] == "full"]
        if full:
            md.append("| full cache | " + " | ".join(
                f"{math.exp(full[0][0] / full[0][1]):.2f}" for _ in ratios) + " |")
        series = {}
        for p in sorted({k[0] for k in agg if k[0] != "full"}):
            cells = []
            for r in ratios:
                v = agg.get((p, r))
                cells.append(f"{math.exp(v[0] / v[1]):.2f}" if v else "–")
                if v:
                    series.setdefault(p, []).append((r * 100, math.exp(v[0] / v[1])))
            md.append(f"| {p} | " + " | ".join(cells) + " |")
        if name == "continuation.csv":
            panels.append(("continuation after compression", "cache kept (%)", "perplexity",
                           series, False))
    path = os.path.join(out, "timing.csv")
    if os.path.exists(path):
        md.append("\n**Time of one compression against llama.cpp's prefill** (2048-token prompt, "
                  "20% kept; every layer scored, one set chosen, evicted; median of 3)\n")
        md.append("| policy | kvevict ms | prefill ms | share |")
        md.append("|---|---:|---:|---:|")
        for r in rows(path):
            k, pf = float(r["kvevict_ms"]), float(r["prefill_ms"])
            md.append(f"| {r['policy']} | {k:.1f} | {pf:.0f} | {100 * k / pf:.1f}% |")
    path = os.path.join(out, "attention.csv")
    if os.path.exists(path):
        real = rows(path)
        syn = {r["policy"]: r for r in rows(os.path.join(out, "synthetic.csv"))}
        layers = sorted({int(r["layer"]) for r in real})
        md.append("\n**Output error at 20% kept: the real model's layers against the synthetic "
                  "`default` workload** (`kvevict eval`; relative error of the attention output, "
                  "in brackets the share of the attention the kept tokens hold)\n")
        md.append("| policy | " + " | ".join(f"layer {l}" for l in layers) + " | synthetic |")
        md.append("|---|" + "---:|" * (len(layers) + 1))
        for p in sorted({r["policy"] for r in real}):
            cells = []
            for l in layers:
                m = [r for r in real if r["policy"] == p and int(r["layer"]) == l]
                cells.append(f"{float(m[0]['error']):.3f} ({float(m[0]['kept_mass']):.2f})"
                             if m else "–")
            s = syn.get(p)
            cells.append(f"{float(s['error']):.3f} ({float(s['kept_mass']):.2f})" if s else "–")
            md.append(f"| {p} | " + " | ".join(cells) + " |")
        wins = {}
        for l in layers:
            path = os.path.join(out, "dump", f"layer{l}", "heads.csv")
            if not os.path.exists(path):
                continue
            err = {(r["policy"], r["budget"], r["head"]): float(r["error_wo"]) for r in rows(path)}
            for (p, b, h), e in err.items():
                if p == "criticalkv":
                    w = wins.setdefault(b, [0, 0])
                    w[0] += int(e < err[("snapkv", b, h)])
                    w[1] += 1
        if wins:
            md.append("\n**CriticalKV against SnapKV per query head on the real layers** (error "
                      "after the model's own W_o; SnapKV window 64, kernel 5, average pooling): "
                      + ", ".join(f"{b}: CriticalKV lower in {w[0]}/{w[1]} heads"
                                  for b, w in sorted(wins.items())) + "\n")
    if timing:
        md.append("\n" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()))
    with open(os.path.join(out, "e2e.md"), "a" if False else "w") as f:
        f.write("\n".join(md) + "\n")
    if panels:
        svg(panels, os.path.join(out, "e2e.svg"))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
