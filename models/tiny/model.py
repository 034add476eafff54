#!/usr/bin/python3
"""The tiny model: Llama architecture exactly as llama.cpp's `llama` graph computes it.

Pre-norm blocks: x += W_o · attn(RoPE(W_q · rms(x)), RoPE(W_k · rms(x)), W_v · rms(x));
x += W_down (silu(W_gate · rms(x)) ⊙ W_up · rms(x)); logits = W_emb · rms(x) (tied embeddings:
the GGUF has no `output` tensor, llama.cpp then reads token_embd).
RMSNorm eps 1e-5, learned weight. RoPE: GPT-J style, rotating the adjacent pairs (2i, 2i+1) with
θ_i = base^(−2i/d) — llama.cpp's LLAMA_ROPE_TYPE_NORM, which the `llama` architecture uses, so
the GGUF stores W_q and W_k unpermuted. GQA: query head h reads KV head h // (n_head / n_kv),
as ggml's broadcast in mul_mat does.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import Config  # noqa: F401 (re-exported: `from model import Config`)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg, positions):
    """cos, sin [len(positions), head_dim/2] for positions (a LongTensor)."""
    d = cfg.head_dim
    inv = cfg.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """x [..., T, d]: rotate pairs (x[2i], x[2i+1]) by the angle of each position."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack((r0, r1), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.heads * hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.heads * hd, cfg.dim, bias=False)
        self.chunk = 256

    def forward(self, x, cos, sin, mask, keep=None):
        B, T, _ = x.shape
        c = self.cfg
        hd = c.head_dim
        q = self.wq(x).view(B, T, c.heads, hd).transpose(1, 2)
        k = self.wk(x).view(B, T, c.kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(B, T, c.kv_heads, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        g = c.heads // c.kv_heads
        scale = 1.0 / math.sqrt(hd)
        # Queries in chunks of `chunk`: chunk i only multiplies the keys it can see, so causal
        # attention costs about half of the dense T×T product (the reason is speed on CPU; the
        # result is the same softmax). A group's g query heads are stacked on the row axis so one
        # GEMM per KV head serves the group: q [B, kv, g, T, d] → rows [B, kv, g·C, d].
        qg = q.reshape(B, c.kv_heads, g, T, hd)
        outs = []
        C = min(T, self.chunk)
        for s in range(0, T, C):
            e = min(T, s + C)
            n = e - s
            rows = qg[:, :, :, s:e].reshape(B, c.kv_heads, g * n, hd)
            att = torch.matmul(rows, k[:, :, :e].transpose(-1, -2)).view(B, c.kv_heads, g, n, e)
            att = torch.softmax(att * scale + mask[s:e, :e], dim=-1)
            if keep is not None:
                keep.append((s, att.detach()))
            outs.append(torch.matmul(att.view(B, c.kv_heads, g * n, e), v[:, :, :e])
                        .view(B, c.kv_heads, g, n, hd))
        y = torch.cat(outs, dim=3)  # [B, kv, g, T, d]; query head = kv·g + j
        y = y.reshape(B, c.heads, T, hd).transpose(1, 2).reshape(B, T, c.heads * hd)
        return self.wo(y)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.gate = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, keep=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, keep)
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.apply(self._init)
        # GPT-2 style: residual projections scaled down by depth
        for b in self.blocks:
            nn.init.normal_(b.attn.wo.weight, std=0.02 / math.sqrt(2 * cfg.layers))
            nn.init.normal_(b.down.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids, keep_attention=None):
        """ids [B, T] → logits [B, T, vocab]; positions 0 … T−1."""
        T = ids.shape[1]
        cos, sin = rope_tables(self.cfg, torch.arange(T))
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x, cos, sin, mask, keep_attention)
        return F.linear(self.norm(x), self.embed.weight)

    def parameters_count(self):
        return sum(p.numel() for p in self.parameters())
