"""Save per-class 16-bit edge probability PNGs and coloured overlays (wraps ``dynfuse.predict``).

Example::

    PYTHONPATH=. python examples/predict.py runs/synthetic-dff/final.pt path/to/images -o preds
    # -> preds/class_001/<name>.png ... preds/class_00K/<name>.png, preds/overlay/<name>.png,
    #    preds/manifest.json ("complete": true once every map is written; dynfuse-eval checks it)

The DFF authors' checkpoints work as they are (``checkpoint_200.pth.tar``); bare weights of our
models need ``--model``, ``--backbone`` and ``--num-classes``. ``--skip-unreadable`` skips (and
lists) images that cannot be decoded instead of stopping at the first.
"""

import sys

from dynfuse.predict import main

if __name__ == "__main__":
    sys.exit(main())
