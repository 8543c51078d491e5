"""The fusion op and the fused location-adaptive branch: validation, backend dispatch, plain-PyTorch
paths and Triton kernels.

``import dynfuse.ops`` does not import Triton: the Triton backend (and its custom ops) is loaded on
its first use, see :mod:`dynfuse.ops.triton_mode`.
"""

from .fuse import dynamic_fuse, resolve_backend
from .fused_learner import fused_learner_fuse
from .reference import authors_fuse, shared_concat
from .triton_mode import is_available as triton_available
from .triton_mode import load_triton_ops

__all__ = [
    "authors_fuse",
    "dynamic_fuse",
    "fused_learner_fuse",
    "load_triton_ops",
    "resolve_backend",
    "shared_concat",
    "triton_available",
]
