#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Dumps one attention layer of a Hugging Face causal LM as the .npy files `kvevict eval` reads.

    python3 examples/dump_layer.py --model meta-llama/Llama-3.2-1B --layer 8 \\
        --text prompt.txt --tokens 4096 --out dump/
    kvevict eval --keys dump/keys.npy --values dump/values.npy --queries dump/queries.npy \\
        --wo dump/wo.npy --ratios 0.1,0.2,0.3 --plot mine.svg

Writes, C order, float16 (float32 with --float32):
  keys.npy    [kv_heads, n, d]       keys after RoPE, as the KV cache stores them
  values.npy  [kv_heads, n, d]
  queries.npy [q_heads, n, d]        every position's query, after RoPE
  wo.npy      [q_heads, d, hidden]   o_proj.weight split by head: W_o^h = weight[:, h*d:(h+1)*d]^T

`kvevict eval` holds the last 16 queries out (--future) and compresses the context before them.
Needs PyTorch and transformers >= 4.45 (attention modules receive `position_embeddings`); works
for Llama, Mistral, Qwen2 and other models with q/k/v/o_proj and the Llama RoPE. Not built or
run by CI.
"""
import argparse
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face model id or path")
    ap.add_argument("--layer", type=int, default=8, help="the decoder layer to dump")
    ap.add_argument("--text", required=True, help="a text file: the prompt")
    ap.add_argument("--tokens", type=int, default=4096, help="truncate the prompt to this many tokens")
    ap.add_argument("--out", default=".", help="output directory")
    ap.add_argument("--float32", action="store_true", help="write float32 instead of float16")
    args = ap.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer(f.read(), return_tensors="pt").input_ids[:, : args.tokens]

    attention = model.model.layers[args.layer].self_attn
    captured = {}

    def hook(module, positional, kwargs, output):  # the layer's input and its RoPE tables
        captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else positional[0]
        captured["rope"] = kwargs["position_embeddings"]

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(ids)
    handle.remove()

    config = model.config
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    hidden = captured["hidden"]
    n = hidden.shape[1]
    with torch.no_grad():
        q = attention.q_proj(hidden).view(1, n, q_heads, d).transpose(1, 2)
        k = attention.k_proj(hidden).view(1, n, kv_heads, d).transpose(1, 2)
        v = attention.v_proj(hidden).view(1, n, kv_heads, d).transpose(1, 2)
        cos, sin = captured["rope"]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        wo = attention.o_proj.weight.T.reshape(q_heads, d, -1)

    dtype = np.float32 if args.float32 else np.float16
    os.makedirs(args.out, exist_ok=True)
    for name, tensor in (("keys", k[0]), ("values", v[0]), ("queries", q[0]), ("wo", wo)):
        array = np.ascontiguousarray(tensor.float().numpy().astype(dtype))
        np.save(os.path.join(args.out, f"{name}.npy"), array)
        print(f"{name:8s} {list(array.shape)} {array.dtype}")
    print(f"layer {args.layer} of {args.model}: {n} tokens, {q_heads} query / {kv_heads} KV heads, d = {d}")


if __name__ == "__main__":
    main()
