#!/usr/bin/python3
"""SnapKV's selection in PyTorch, whole process timed: what a user would write instead of
`kvevict select --policy snapkv` (issue 21's yardstick; bench/select_vs_torch.sh runs both).

    /usr/bin/python3 bench/snapkv_torch.py --make DIR           # K, V [8, 32768, 128], Q [32, 32, 128]
    /usr/bin/python3 bench/snapkv_torch.py --dir DIR --budget 6553 [--out kept.json]
    /usr/bin/python3 bench/snapkv_torch.py --dir DIR --budget 6553 --check kvevict.json

Debian's Python (`python3-torch`, `python3-numpy`). The selection is kvevict's SnapKV with its
defaults (Li et al. 2024; the authors' LongBench setting): the last w = 32 queries attend causally,
softmax in fp32, mean over the window, max pooling (kernel 7, out-of-range neighbours ignored, as
torch's -inf padding), mean over each KV head's 4 query heads, the window always kept and the top
B - w prefix tokens per KV head, ties to the more recent token (a stable sort of the reversed
scores). `--check` prints how many (head, token) pairs a kvevict JSON output shares with this one.
"""
import argparse
import json
import os
import sys
import time

T0 = time.time()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def make(directory):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(21)
    for name, shape in (("k", (8, 32768, 128)), ("v", (8, 32768, 128)), ("q", (32, 32, 128))):
        np.save(os.path.join(directory, name + ".npy"), rng.standard_normal(shape, np.float32))


def select(k, q, budget, window=32, kernel=7):
    kv_heads, n, d = k.shape
    q_heads = q.shape[0]
    g = q_heads // kv_heads
    w = min(window, q.shape[1])
    win = q[:, -w:, :].reshape(kv_heads, g * w, d)
    logits = torch.bmm(win, k.transpose(1, 2)) / d ** 0.5  # [kv_heads, g·w, n]
    pos = torch.arange(n)
    qpos = (n - w + torch.arange(w)).repeat(g)  # row r is query r % w of its head
    logits.masked_fill_(pos[None, :] > qpos[:, None], float("-inf"))
    attn = torch.softmax(logits, dim=-1).view(kv_heads, g, w, n).mean(dim=2)  # [kv, g, n]
    prefix = attn[..., : n - w].reshape(kv_heads * g, 1, n - w)
    pooled = F.max_pool1d(prefix, kernel, stride=1, padding=kernel // 2)[..., : n - w]
    scores = pooled.view(kv_heads, g, n - w).mean(dim=1)  # [kv_heads, n − w]
    take = max(0, min(budget, n) - w)
    flipped = scores.flip(-1)  # a stable descending sort prefers the later token on ties
    order = torch.sort(flipped, dim=-1, descending=True, stable=True).indices[:, :take]
    kept = []
    for h in range(kv_heads):
        top = (n - w - 1 - order[h]).tolist()
        kept.append(sorted(top) + list(range(n - w, n)))
    return kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make")
    ap.add_argument("--dir")
    ap.add_argument("--budget", type=int, default=6553)
    ap.add_argument("--out")
    ap.add_argument("--check")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.make:
        make(args.make)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    load = lambda name: torch.from_numpy(np.load(os.path.join(args.dir, name + ".npy")))
    k, q = load("k"), load("q")
    load("v")  # read as the command reads it (SnapKV does not use the values)
    kept = select(k, q, args.budget)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"kept": kept}, f)
    if args.check:
        other = json.load(open(args.check))["kept"]
        same = sum(len(set(a) & set(b)) for a, b in zip(kept, other))
        total = sum(len(a) for a in kept)
        print(f"agreement with {args.check}: {same}/{total} (head, token) pairs")
    print(f"torch: {time.time() - T0:.2f} s in-process (interpreter start not included)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
