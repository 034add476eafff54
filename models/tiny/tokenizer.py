#!/usr/bin/python3
"""Trains the tiny model's SentencePiece tokenizer on the train split.

    /usr/bin/python3 models/tiny/tokenizer.py [--cache DIR] [--out models/tiny/tokenizer.model]

BPE (the model type llama.cpp's `llama` / SPM tokenizer reproduces: it merges by piece score),
4096 pieces: <unk> 0, <s> 1, </s> 2, the 256 byte-fallback pieces <0x00>…<0xFF>, then merges.
split_digits, so a number is one token per digit (the passkey's five digits are five tokens).
Default normalisation (nmt_nfkc), dummy prefix on, as Llama's own tokenizer.
"""
import argparse
import io
import os
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402

VOCAB = 4096


def train(cache, out):
    sents = [s for _, doc in data.splits(cache)["train"] for s in doc]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents), model_writer=model, model_type="bpe",
        vocab_size=VOCAB, split_digits=True, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        max_sentence_length=16384, minloglevel=2)
    with open(out, "wb") as f:
        f.write(model.getvalue())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "tokenizer.model"))
    args = ap.parse_args()
    train(args.cache, args.out)
    sp = spm.SentencePieceProcessor(model_file=args.out)
    print(f"{args.out}: {sp.vocab_size()} pieces")
    print(sp.encode("The pass key is 71432. Remember it.", out_type=str))


if __name__ == "__main__":
    sys.exit(main())
