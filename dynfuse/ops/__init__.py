"""The fusion op: validation, backend dispatch, plain-PyTorch paths and Triton kernels."""

from .fuse import dynamic_fuse, resolve_backend
from .reference import authors_fuse, shared_concat
from .triton_backend import is_available as triton_available

__all__ = ["authors_fuse", "dynamic_fuse", "resolve_backend", "shared_concat", "triton_available"]
