"""The tiny model's shape (no PyTorch needed: the GGUF exporter reads it too)."""
from dataclasses import asdict, dataclass


@dataclass
class Config:
    vocab: int = 4096
    dim: int = 256
    layers: int = 4
    heads: int = 4  # of 64 dimensions (run v15); runs v9-v14 had 8 of 32 (train.py's schedules)
    kv_heads: int = 2
    ffn: int = 768
    context: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self):
        return self.dim // self.heads

    def to_dict(self):
        return asdict(self)
