#!/usr/bin/python3
"""Writes the conversion check's reference: the PyTorch model's logits on validation text.

    /usr/bin/python3 models/tiny/reference.py --checkpoint RUN/final.pt [--cache DIR]
                                              [--tokens 48] [--out models/tiny]

Writes `reference_tokens.npy` (float32 [T]: the token ids, BOS first; exact in float32) and
`reference_logits.npy` (float32 [T, vocab]: the logits after each token) for the first
sentences of the validation split. The weights are rounded to float16 first, as the GGUF ships
them (export_gguf.py writes f16 matrices, f32 norms), so what the llama.cpp test
(`TrainedModel.LogitsMatchPyTorch`) compares is the arithmetic of the two engines, not the
rounding of the export; the difference that rounding itself makes is printed too.
Needs Debian's python3-torch.
"""
import argparse
import os
import sys

import numpy as np
import sentencepiece as spm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
from model import Config, Llama  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.model"))
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    valid = data.Tokenized(sp, data.splits(args.cache)["valid"])
    ids = [sp.bos_id()] + [t for s in valid.docs[0] for t in s][: args.tokens - 1]
    ckpt = torch.load(args.checkpoint, map_location="cpu")
    model = Llama(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        exact = model(x)[0]
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
        logits = model(x)[0].numpy().astype(np.float32)
    print(f"f16 rounding of the weights moves the logits by up to "
          f"{(exact - torch.from_numpy(logits)).abs().max().item():.4f}")
    np.save(os.path.join(args.out, "reference_tokens.npy"), np.asarray(ids, dtype=np.float32))
    np.save(os.path.join(args.out, "reference_logits.npy"), logits)
    print(f"{args.out}: reference over {len(ids)} tokens, logits {logits.shape}")


if __name__ == "__main__":
    sys.exit(main())
