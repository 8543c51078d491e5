"""Save per-class 16-bit edge probability PNGs and coloured overlays (wraps ``dynfuse.predict``).

Example::

    PYTHONPATH=. python examples/predict.py runs/synthetic-dff/final.pt path/to/images -o preds
    # -> preds/class_001/<name>.png ... preds/class_00K/<name>.png, preds/overlay/<name>.png
"""

import sys

from dynfuse.predict import main

if __name__ == "__main__":
    sys.exit(main())
