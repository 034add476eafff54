#!/usr/bin/python3
"""Measures the trained tiny model in PyTorch: what the model card reports.

    /usr/bin/python3 models/tiny/evaluate.py --checkpoint RUN/final.pt [--cache DIR] [--json OUT]

- perplexity on the validation and test splits (documents concatenated, windows of 2048 tokens
  with stride 1024: every token after the first window is scored with ≥ 1024 tokens of context);
- full-cache passkey accuracy on test-split filler with held-out keys (multiples of 11, never
  trained on), lengths 512 / 1024 / 2048 × depths 0, 10, …, 100% (`--keys` prompts per cell);
  a prompt of length L holds at most L − 6 tokens so that the answer fits in the context;
- what the attention looks like per layer, on test documents of 2048 tokens, for the queries of
  the last 512 positions, averaged over heads and queries: the share on the first token (sink),
  on the last 32 tokens (recency), and the mass of the top 5% of keys (concentration);
- two greedy continuations of test-split text.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
import train  # noqa: E402
from model import Config, Llama  # noqa: E402


def load(checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu")
    model = Llama(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


def stream(tok):
    return [t for doc in tok.docs for s in doc for t in s]


@torch.no_grad()
def perplexity(model, tok, window=2048, stride=1024):
    ids = stream(tok)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, stride):
        chunk = [tok.sp.bos_id()] + ids[start:start + window - 1]
        x = torch.tensor([chunk])
        logp = F.log_softmax(model(x[:, :-1])[0], -1)
        targets = x[0, 1:]
        first = 0 if start == 0 else window - stride - 1  # score only the new tokens
        lp = logp[first:].gather(1, targets[first:, None])[:, 0]
        nll -= lp.sum().item()
        count += lp.numel()
        if start + window - 1 >= len(ids):
            break
    return math.exp(nll / count), count


@torch.no_grad()
def passkey_grid(model, tok, lengths, keys, seed):
    depths = [i / 10 for i in range(11)]
    grid = {}
    for L in lengths:
        for d in depths:
            rng = np.random.default_rng([seed, L, int(d * 10)])
            hits = 0
            for _ in range(keys):
                prompt, answer, _ = data.passkey_example(tok, rng, L - len(answer_len()), d,
                                                         train.eval_key(rng))
                x = torch.tensor([prompt + answer])
                pred = model(x).argmax(-1)[0]
                got = pred[len(prompt) - 1:len(prompt) - 1 + len(answer)].tolist()
                hits += int(got == answer)
            grid[f"{L}@{int(d * 100)}"] = hits / keys
    return grid


def answer_len():
    return " 12345"  # the answer's tokens: "▁" and five digits


@torch.no_grad()
def attention_structure(model, tok, docs=4, n=2048, last=512, seed=3):
    rng = np.random.default_rng(seed)
    per_layer = None
    for _ in range(docs):
        ids = train.lm_sequence(tok, rng, n - 1)[:n]
        keep = []
        model(torch.tensor([ids]), keep_attention=keep)
        # keep: per layer, per query chunk: (first query, probs [1, kv, g, rows, keys])
        layers = {}
        for i, (s, att) in enumerate(keep):
            layers.setdefault(i // ((n + 255) // 256), []).append((s, att[0]))
        stats = []
        for li in sorted(layers):
            sink = rec = top = 0.0
            cnt = 0
            for s, att in layers[li]:
                a = att.reshape(-1, att.shape[-2], att.shape[-1])  # [heads, rows, keys]
                for r in range(a.shape[1]):
                    q = s + r
                    if q < n - last:
                        continue
                    row = a[:, r, :q + 1]
                    sink += row[:, 0].sum().item()
                    rec += row[:, max(0, q - 31):].sum().item()
                    k = max(1, math.ceil(0.05 * (q + 1)))
                    top += row.topk(k, dim=-1).values.sum().item()
                    cnt += row.shape[0]
            stats.append((sink / cnt, rec / cnt, top / cnt))
        per_layer = stats if per_layer is None else [
            tuple(a + b for a, b in zip(x, y)) for x, y in zip(per_layer, stats)]
    return [{"layer": i, "sink": s / docs, "recent32": r / docs, "top5pct": t / docs}
            for i, (s, r, t) in enumerate(per_layer)]


@torch.no_grad()
def continuation(model, tok, prompt_tokens=48, new=48, seed=11):
    rng = np.random.default_rng(seed)
    ids = train.lm_sequence(tok, rng, prompt_tokens)[:prompt_tokens]
    out = list(ids)
    for _ in range(new):
        nxt = model(torch.tensor([out]))[0, -1].argmax().item()
        out.append(nxt)
    return tok.sp.decode(ids), tok.sp.decode(out[len(ids):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.model"))
    ap.add_argument("--keys", type=int, default=10, help="prompts per (length, depth) cell")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.checkpoint)
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    parts = data.splits(args.cache)
    valid = data.Tokenized(sp, parts["valid"])
    test = data.Tokenized(sp, parts["test"])
    out = {}
    out["valid_ppl"], out["valid_tokens"] = perplexity(model, valid)
    out["test_ppl"], out["test_tokens"] = perplexity(model, test)
    print(f"perplexity: valid {out['valid_ppl']:.2f} ({out['valid_tokens']} tokens), "
          f"test {out['test_ppl']:.2f} ({out['test_tokens']} tokens)", flush=True)
    out["passkey"] = passkey_grid(model, test, [512, 1024, 2048], args.keys, seed=2026)
    for L in [512, 1024, 2048]:
        row = [out["passkey"][f"{L}@{d}"] for d in range(0, 101, 10)]
        print(f"passkey {L}: " + " ".join(f"{x:.1f}" for x in row) + f"  mean {np.mean(row):.3f}",
              flush=True)
    out["attention"] = attention_structure(model, test)
    for a in out["attention"]:
        print(f"layer {a['layer']}: sink {a['sink']:.3f} recent32 {a['recent32']:.3f} "
              f"top5% {a['top5pct']:.3f}", flush=True)
    out["continuations"] = [continuation(model, test, seed=s) for s in (11, 12)]
    for p, c in out["continuations"]:
        print(f"prompt: {p}\n  model: {c}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
