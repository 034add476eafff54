#!/usr/bin/python3
"""Trains the tiny model (model.py) on the Brown corpus with passkey examples mixed in.

    /usr/bin/python3 models/tiny/train.py --out build/tiny [--cache DIR] [--threads 2]

One command, CPU, seeded; it checkpoints every --save-every steps into --out and resumes from
the newest checkpoint there, with the same data as an uninterrupted run (every step's batch is
drawn from a generator seeded by (seed, step)). Writes --out/train.log (one JSON object per
line) and --out/final.pt.

Curriculum (steps × batch × sequence length; learning rate 1e-3: linear warm-up, then cosine to
10%). First 500 steps of copy sequences alone (spans over a pool of 64 tokens written two or
three times in a row, 64 tokens): an induction head — the circuit passkey retrieval needs —
forms on them. Then retrieval is learnt distance first: at 64 tokens half the sequences are
passkey prompts that are almost all needle and question (18–26 tokens of filler); the filler
then grows with the sequence (128, 256, … 2048 tokens), so the head must find the needle by
content at every distance the context allows; copy sequences (now also numbers and any token)
stay in the short phases. What was tried first and failed on this machine's budget, each for
~250–1000 steps with the answer's digit loss staying at ln 10 (no copying): passkeys at 256
tokens from the start (lr 2e-3); copy sequences over the whole vocabulary mixed with text and
passkeys (lr 3e-3, then 1e-3); copy sequences alone over the whole vocabulary and numbers;
dense passkeys with mixed copy data at batch 16 and at batch 4. Probes of the same model on
copy data alone showed why: over a pool of 64 tokens it copies after ~300 steps, over all 3837
tokens it had barely started at 350, and mixed with text and passkeys it had not at 500.
This schedule (tried 2026-11-30, /work/tiny-v8, stopped at step 1087 of 1700): the pool-only
copy loss fell from 4.23 to 3.40 nats in 500 steps (a perfect copier scores about 1.9 there, a
non-copier about 4.2: partial copying), valid NLL 6.22 at step 1000, passkey accuracy 0/8 at 64
and at 128 tokens and 0/12 at 2048 at every evaluation.

Each sequence is BOS + text. With probability `passkey_share` it is a passkey example: filler
from the train split, the needle sentence at a uniform random depth, the question, the key, then
the filler goes on to the end of the sequence; the prompt part is uniform in [T/4, T]. Loss is
on every token (the needle repeats its key, so copying is trained at short range as well as from
the question). Training keys are 5-digit numbers not divisible by 11; evaluation keys are the
multiples of 11, so reported accuracy is on keys never seen in training.
"""
import argparse
import json
import math
import os
import sys
import time

# Idle OpenMP threads spin only briefly before they sleep: on a 2-core machine shared with a
# compiler, threads spinning for a descheduled partner made steps up to 10x slower, and never
# spinning (OMP_WAIT_POLICY=PASSIVE) cost 60% on an idle machine.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
from model import Config, Llama  # noqa: E402

# (steps, batch, sequence length, passkey share, copy share); the rest is running text. A copy
# share of 1 means copy sequences over the 64-token pool alone (see `copy_sequence`): the first
# phase, where the induction head forms.
PHASES = [(500, 16, 64, 0.0, 1.0), (300, 16, 64, 0.5, 0.3), (300, 16, 128, 0.6, 0.2),
          (200, 16, 256, 0.5, 0.05), (150, 8, 512, 0.5, 0.0), (100, 4, 1024, 0.5, 0.0),
          (150, 2, 2048, 0.5, 0.0)]
PEAK_LR, WARMUP, MIN_LR_FRACTION = 1e-3, 30, 0.1


def train_key(rng):
    while True:
        k = int(rng.integers(10000, 100000))
        if k % 11:
            return str(k)


def eval_key(rng):
    return str(11 * int(rng.integers(910, 9091)))  # 10010 … 99990, multiples of 11


def lm_sequence(tok, rng, T):
    """BOS + T tokens of running text from a random sentence of a random document."""
    ids = [tok.sp.bos_id()]
    doc = int(rng.integers(len(tok.docs)))
    for s in tok.stream(doc, int(rng.integers(len(tok.docs[doc])))):
        ids.extend(s)
        if len(ids) > T:
            return ids[:T + 1]


def passkey_sequence(tok, rng, T):
    plen = int(rng.integers(max(T // 4, 48), T - 8))
    prompt, answer, _ = data.passkey_example(tok, rng, plen, float(rng.random()), train_key(rng))
    ids = prompt + answer
    doc = int(rng.integers(len(tok.docs)))
    for s in tok.stream(doc, int(rng.integers(len(tok.docs[doc])))):
        if len(ids) > T:
            break
        ids.extend(s)
    return ids[:T + 1]


def copy_sequence(tok, rng, T, pool_only=False):
    """BOS + spans written two to four times in a row (`a b c a b c …`) until T + 1 tokens: the
    cheapest data on which a model learns to copy what followed an earlier match (an induction
    head), the mechanism passkey retrieval needs. Spans draw from a pool of 64 tokens, where
    each token recurs often enough for the copy to be learnt fast (on all 3837 tokens at once
    the same model needed several times the steps) — only from it with `pool_only`; otherwise
    40% from the pool, 40% are numbers as the passkey writes them (`▁` then 5–10 digits), 20%
    from the whole vocabulary."""
    ids = [tok.sp.bos_id()]
    first = 259  # past <unk>, <s>, </s> and the 256 byte pieces
    digits = tok.sp.encode("0123456789")[-10:]
    space = tok.sp.encode(" 7")[0]  # the "▁" piece before a number
    while len(ids) <= T:
        u = 0.0 if pool_only else rng.random()
        if u < 0.4:
            span = rng.integers(first, first + 64, int(rng.integers(4, 13))).tolist()
        elif u < 0.8:
            span = [space] + [digits[d] for d in rng.integers(0, 10, int(rng.integers(5, 11)))]
        else:
            span = rng.integers(first, tok.sp.vocab_size(), int(rng.integers(4, 13))).tolist()
        ids.extend(span * int(rng.integers(2, 4 if pool_only else 5)))
    return ids[:T + 1]


def batch(tok, seed, step, B, T, share, copy_share=0.0):
    rng = np.random.default_rng([seed, step])
    rows = []
    for _ in range(B):
        u = rng.random()
        if u < copy_share:
            rows.append(copy_sequence(tok, rng, T, pool_only=copy_share >= 1.0))
        elif u < copy_share + share:
            rows.append(passkey_sequence(tok, rng, T))
        else:
            rows.append(lm_sequence(tok, rng, T))
    return torch.tensor(rows, dtype=torch.long)


def lr_at(step, total):
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    p = (step - WARMUP) / max(1, total - WARMUP)
    return PEAK_LR * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * p)))


def phase_of(step):
    s = 0
    for steps, B, T, share, copy in PHASES:
        if step < s + steps:
            return B, T, share, copy
        s += steps
    raise IndexError(step)


@torch.no_grad()
def passkey_accuracy(model, tok, length, count, seed, batch_size=2):
    """Share of `count` prompts (≤ length tokens, depths spread evenly, evaluation keys) whose
    key the model produces greedily. Teacher forcing: greedy decoding yields the key exactly
    when the argmax at every answer position is the answer's token, so one forward suffices."""
    rng = np.random.default_rng([seed, length, 7])
    hits = 0
    items = []
    for i in range(count):
        depth = i / max(1, count - 1)
        prompt, answer, _ = data.passkey_example(tok, rng, length - len("12345") - 1, depth,
                                                 eval_key(rng))
        items.append((prompt, answer))
    for b in range(0, count, batch_size):
        group = items[b:b + batch_size]
        width = max(len(p) + len(a) for p, a in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        for r, (p, a) in enumerate(group):
            ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        pred = model(ids).argmax(-1)
        for r, (p, a) in enumerate(group):
            got = pred[r, len(p) - 1:len(p) - 1 + len(a)].tolist()
            hits += int(got == a)
    return hits / count


@torch.no_grad()
def validation_nll(model, tok, T, count, seed):
    """Mean next-token NLL (nats) over `count` fixed windows of T tokens of the validation split."""
    rng = np.random.default_rng([seed, T, 3])
    total, n = 0.0, 0
    for _ in range(count):
        ids = torch.tensor([lm_sequence(tok, rng, T)])
        logits = model(ids[:, :-1])
        total += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        n += T
    return total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.model"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    parts = data.splits(args.cache)
    train_tok = data.Tokenized(sp, parts["train"])
    valid_tok = data.Tokenized(sp, parts["valid"])

    cfg = Config(vocab=sp.vocab_size())
    torch.manual_seed(args.seed)
    model = Llama(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8)
    total = sum(p[0] for p in PHASES)
    step = 0
    ckpt = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    log = open(os.path.join(args.out, "train.log"), "a")

    def record(obj):
        obj["time"] = round(time.time(), 1)
        log.write(json.dumps(obj) + "\n")
        log.flush()
        print(json.dumps(obj), flush=True)

    if step == 0:
        record({"event": "start", "config": cfg.to_dict(), "params": model.parameters_count(),
                "phases": PHASES, "seed": args.seed, "threads": args.threads,
                "torch": torch.__version__})
    while step < total:
        B, T, share, copy = phase_of(step)
        t0 = time.time()
        ids = batch(train_tok, args.seed, step, B, T, share, copy)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total)
        model.train()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        record({"step": step, "T": T, "loss": round(loss.item(), 4),
                "grad_norm": round(float(norm), 3), "lr": round(lr_at(step - 1, total), 6),
                "seconds": round(time.time() - t0, 2)})
        boundary = step == total or phase_of(step)[1] != T
        if step % args.eval_every == 0 or boundary:
            model.eval()
            ev = {"event": "eval", "step": step,
                  "valid_nll": round(validation_nll(model, valid_tok, 512, 4, args.seed), 4),
                  f"passkey@{T}": passkey_accuracy(model, valid_tok, T, 8, args.seed)}
            if boundary:
                ev["passkey@2048"] = passkey_accuracy(model, valid_tok, 2048, 12, args.seed)
            record(ev)
        if step % args.save_every == 0 or boundary:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "config": cfg.to_dict()}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "step": step},
               os.path.join(args.out, "final.pt"))
    record({"event": "done", "step": step})


if __name__ == "__main__":
    sys.exit(main())
