"""Writes head_state_v1.pt: head state dicts in the version-1 format, with inputs and outputs.

Version 1 is the format before HeadOptions/FixedWeights (dynfuse commit 5070bb1 and earlier): a fixed
head kept its fusion bias at ``learner.bias`` (a FixedFusion learner). Run with that dynfuse first on
the path (``git archive 5070bb1 dynfuse | tar -x -C /tmp/old; PYTHONPATH=/tmp/old python ...``);
tests/test_heads.py loads the file into today's heads and compares the outputs.
"""

from pathlib import Path

import torch

from dynfuse import CASENetHead, DFFHead

torch.manual_seed(0)
channels, strides = (4, 4, 4, 8), (1, 2, 4, 8)
heads = {
    "casenet": CASENetHead(channels, 2, strides=strides, backend="reference"),
    "normalizer": DFFHead(channels, 2, strides=strides, learner="fixed", backend="reference"),
}
with torch.no_grad():
    for head in heads.values():
        for name, buf in head.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        head.eval()
    feats = [torch.randn(2, c, 16 // s, 16 // s) for c, s in zip(channels, strides, strict=True)]
    record = {
        "features": feats,
        "state": {k: h.state_dict() for k, h in heads.items()},
        "fuse": {k: h(feats, (16, 16)).fuse for k, h in heads.items()},
    }
assert "learner.bias" in record["state"]["casenet"]
torch.save(record, Path(__file__).with_name("head_state_v1.pt"))
