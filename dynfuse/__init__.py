"""dynfuse: Dynamic Feature Fusion (DFF) for semantic edge detection."""

__version__ = "0.1.0"

__all__ = ["__version__"]
