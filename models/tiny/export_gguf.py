#!/usr/bin/python3
"""Writes the trained tiny model as a GGUF file llama.cpp loads: architecture `llama`, the
SentencePiece vocabulary as a `llama` (SPM) tokenizer, f16 matrices and f32 norms.

    /usr/bin/python3 models/tiny/export_gguf.py --checkpoint RUN/final.pt \\
        --llama-cpp "$(tools/fetch-llama-cpp.sh)" [--out models/tiny/tiny.gguf] [--f32]
    /usr/bin/python3 models/tiny/export_gguf.py --random SEED --llama-cpp DIR --out FILE

`--random SEED` writes the same architecture with seeded random weights instead (NumPy only, no
PyTorch): the llama.cpp integration's tests check the adapter's mechanics on it — removing the
right cells, positions, bit-identical full budgets — which need a llama model, not a trained one.
Matrices are N(0, 1/in) (so activations and attention logits are O(1) and attention is far from
uniform), norms 1, embeddings N(0, 1).

Uses llama.cpp's own `gguf-py` (pure Python + NumPy) from the llama.cpp tree given, not a copy.
Tensor layout: every matrix is the PyTorch `nn.Linear.weight` as it is ([out, in], row-major;
gguf-py reverses the dims into ggml's ne order). W_q and W_k are written unpermuted: the model
rotates adjacent pairs (x[2i], x[2i+1]), which is what llama.cpp's `llama` architecture does
(LLAMA_ROPE_TYPE_NORM); HF checkpoints need the converter's permutation only because they rotate
halves. There is no `output.weight`: llama.cpp then ties the output to `token_embd`.
"""
import argparse
import os
import sys

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from config import Config  # noqa: E402


def gguf_module(llama_cpp):
    path = os.path.join(llama_cpp, "gguf-py")
    if not os.path.isdir(os.path.join(path, "gguf")):
        raise SystemExit(f"export: --llama-cpp: expected a llama.cpp tree with gguf-py/, got {llama_cpp}")
    sys.path.insert(0, path)
    import gguf  # noqa: E402
    return gguf


def tensors(state, cfg):
    """(GGUF name, numpy array) in llama.cpp's names, from the PyTorch state dict."""
    yield "token_embd.weight", state["embed.weight"]
    for i in range(cfg.layers):
        p = f"blocks.{i}."
        yield f"blk.{i}.attn_norm.weight", state[p + "attn_norm.weight"]
        yield f"blk.{i}.attn_q.weight", state[p + "attn.wq.weight"]
        yield f"blk.{i}.attn_k.weight", state[p + "attn.wk.weight"]
        yield f"blk.{i}.attn_v.weight", state[p + "attn.wv.weight"]
        yield f"blk.{i}.attn_output.weight", state[p + "attn.wo.weight"]
        yield f"blk.{i}.ffn_norm.weight", state[p + "ffn_norm.weight"]
        yield f"blk.{i}.ffn_gate.weight", state[p + "gate.weight"]
        yield f"blk.{i}.ffn_up.weight", state[p + "up.weight"]
        yield f"blk.{i}.ffn_down.weight", state[p + "down.weight"]
    yield "output_norm.weight", state["norm.weight"]


def random_state(cfg, seed):
    """Seeded random weights under the PyTorch state dict's names (see the module doc)."""
    rng = np.random.default_rng(seed)
    hd = cfg.head_dim

    def mat(out, inp):
        return rng.normal(0.0, 1.0 / np.sqrt(inp), (out, inp)).astype(np.float32)

    state = {"embed.weight": rng.normal(0.0, 1.0, (cfg.vocab, cfg.dim)).astype(np.float32),
             "norm.weight": np.ones(cfg.dim, np.float32)}
    for i in range(cfg.layers):
        p = f"blocks.{i}."
        state[p + "attn_norm.weight"] = np.ones(cfg.dim, np.float32)
        state[p + "ffn_norm.weight"] = np.ones(cfg.dim, np.float32)
        state[p + "attn.wq.weight"] = mat(cfg.heads * hd, cfg.dim)
        state[p + "attn.wk.weight"] = mat(cfg.kv_heads * hd, cfg.dim)
        state[p + "attn.wv.weight"] = mat(cfg.kv_heads * hd, cfg.dim)
        state[p + "attn.wo.weight"] = mat(cfg.dim, cfg.heads * hd)
        state[p + "gate.weight"] = mat(cfg.ffn, cfg.dim)
        state[p + "up.weight"] = mat(cfg.ffn, cfg.dim)
        state[p + "down.weight"] = mat(cfg.dim, cfg.ffn)
    return state


def export(checkpoint, tokenizer, llama_cpp, out, f32=False, seed=None):
    gguf = gguf_module(llama_cpp)
    if checkpoint is None:
        cfg = Config()
        state = random_state(cfg, seed)
    else:
        import torch  # only for a trained checkpoint
        ckpt = torch.load(checkpoint, map_location="cpu")
        cfg = Config(**ckpt["config"])
        state = {k: v.float().numpy() for k, v in ckpt["model"].items()}
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    if sp.vocab_size() != cfg.vocab:
        raise SystemExit(f"export: tokenizer: expected {cfg.vocab} pieces, got {sp.vocab_size()}")

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("kvevict-tiny" if checkpoint is not None else f"kvevict-tiny-random-{seed}")
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)

    pieces, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)

    for name, array in tensors(state, cfg):
        array = np.ascontiguousarray(array)
        if array.ndim == 2 and not f32:
            array = array.astype(np.float16)
        else:
            array = array.astype(np.float32)
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a train.py checkpoint (final.pt)")
    src.add_argument("--random", type=int, metavar="SEED", help="seeded random weights instead")
    ap.add_argument("--llama-cpp", required=True, help="a llama.cpp source tree (for gguf-py)")
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(HERE, "tiny.gguf"))
    ap.add_argument("--f32", action="store_true", help="f32 matrices (default f16)")
    args = ap.parse_args()
    out = export(args.checkpoint, args.tokenizer, args.llama_cpp, args.out, args.f32, args.random)
    print(f"{out}: {os.path.getsize(out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
