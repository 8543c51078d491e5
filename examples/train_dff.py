"""Train a DFF / CASENet semantic edge detector (thin wrapper over ``dynfuse.training.main``).

Examples::

    # CPU demo: tiny DFF on procedural scenes, a few minutes, prints validation MF-ODS
    PYTHONPATH=. python examples/train_dff.py --dataset synthetic

    # The paper's Cityscapes setting on 4 GPUs (global batch 8, crop 640, 200 epochs)
    torchrun --nproc_per_node 4 examples/train_dff.py --dataset cityscapes \\
        --data-root data/cityscapes-edges --pretrained-backbone resnet50.pth

    # Continue a killed run where its last finished epoch left off
    python examples/train_dff.py --dataset synthetic --resume auto

    # Start again in a folder that holds a run (replaced when the new run's first checkpoint lands)
    python examples/train_dff.py --dataset synthetic --overwrite

``python examples/train_dff.py --help`` lists every flag with its per-dataset default.
"""

import sys

from dynfuse.training import main

if __name__ == "__main__":
    sys.exit(main())
