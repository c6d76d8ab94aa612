"""Per-head RMSNorm + partial NeoX RoPE of q and k, and packing of v, in one launch (M3 attention inputs)."""

from .fused import qk_norm_rope
from .naive import naive_qk_norm_rope

__all__ = ["naive_qk_norm_rope", "qk_norm_rope"]
