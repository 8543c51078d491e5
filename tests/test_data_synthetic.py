"""The Synthetic dataset: contract, determinism, exact labels, colour cue, learnability."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dynfuse.data import Synthetic, mask_to_edges, train_transforms
from dynfuse.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, RandomCrop
from dynfuse.losses import reweighted_edge_loss


def test_item_contract_and_collate():
    ds = Synthetic(num_classes=3, size=(24, 31), length=5, seed=2)
    item = ds[0]
    assert set(item) == {"image", "edges", "valid", "name"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 24, 31)
    assert item["edges"].dtype == torch.float32 and item["edges"].shape == (3, 24, 31)
    assert set(item["edges"].unique().tolist()) <= {0.0, 1.0}
    assert item["valid"].dtype == torch.bool and item["valid"].all()
    assert item["name"] == "synthetic/train/000000"
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 31) and batch["valid"].shape == (4, 24, 31)
    assert batch["name"][1] == "synthetic/train/000001"
    assert len(ds) == 5
    assert torch.equal(ds[-1]["edges"], ds[4]["edges"])
    with pytest.raises(IndexError):
        ds[5]


def test_deterministic_pure_function_of_seed_split_index():
    a = Synthetic(4, 32, length=10, seed=7)
    b = Synthetic(4, 32, length=3, seed=7)
    for i in range(3):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert torch.equal(a[i]["edges"], b[i]["edges"])
    # Access order does not matter.
    assert torch.equal(a[2]["image"], Synthetic(4, 32, length=10, seed=7)[2]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], Synthetic(4, 32, length=1, seed=8)[0]["image"])
    val = Synthetic(4, 32, length=1, seed=7, split="val")
    assert not torch.equal(a[0]["image"], val[0]["image"])
    assert val[0]["name"] == "synthetic/val/000000"


def test_edges_are_exact_from_painted_maps():
    ds = Synthetic(5, 40, length=4, seed=3, radius=1.5)
    for i in range(4):
        scene = ds.scene(i)
        assert scene.labels.min() >= -1 and scene.labels.max() < 5
        assert ((scene.labels >= 0) == (scene.instances > 0)).all()
        want = mask_to_edges(scene.labels, 5, radius=1.5, instance_map=scene.instances)
        np.testing.assert_array_equal(scene.edges, want)
        assert torch.equal(ds[i]["edges"].bool(), torch.from_numpy(want))
        # The image is the scene's image, normalised.
        img = torch.from_numpy(scene.image).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        torch.testing.assert_close(ds[i]["image"], (img - mean) / std)


def test_scenes_have_instances_overlaps_and_all_classes_over_the_dataset():
    ds = Synthetic(4, 48, length=40, seed=0)
    classes = set()
    multi_label = 0
    for i in range(len(ds)):
        scene = ds.scene(i)
        classes |= set(np.unique(scene.labels[scene.labels >= 0]).tolist())
        multi_label += int((scene.edges.sum(0) >= 2).any())
        assert scene.edges.any()
    assert classes == {0, 1, 2, 3}
    assert multi_label > 10  # boundaries between two classes carry both


def test_colour_correlates_with_class():
    ds = Synthetic(4, 48, length=30, seed=5, noise=0.0)
    hue_error = []
    for i in range(len(ds)):
        scene = ds.scene(i)
        for k in range(4):
            mask = scene.labels == k
            if mask.sum() < 20:
                continue
            r, g, b = scene.image[mask].mean(0)
            h = colorsys.rgb_to_hsv(r, g, b)[0]
            d = abs(h - k / 4)
            hue_error.append(min(d, 1 - d))
    assert len(hue_error) > 20
    assert np.median(hue_error) < 0.08  # classes are 0.25 apart on the hue circle


def test_transform_applies_and_normalize_is_rejected():
    ds = Synthetic(4, 40, length=2, transform=train_transforms(48, scales=(1.0,)))
    torch.manual_seed(0)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48)
    assert item["valid"].sum() == 40 * 40
    assert torch.all(item["image"][:, ~item["valid"]] == 0)
    assert not item["edges"][:, ~item["valid"]].any()
    with pytest.raises(ValueError, match="Normalize"):
        Synthetic(transform=Normalize())
    with pytest.raises(ValueError, match="Normalize"):
        from dynfuse.data.transforms import Compose

        Synthetic(transform=Compose([RandomCrop(8), Normalize()]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        Synthetic(num_classes=0)
    with pytest.raises(TypeError, match="num_classes"):
        Synthetic(num_classes=2.5)
    with pytest.raises(ValueError, match="split"):
        Synthetic(split="training")
    with pytest.raises(ValueError, match="size"):
        Synthetic(size=4)
    with pytest.raises(TypeError, match="size"):
        Synthetic(size="big")
    with pytest.raises(ValueError, match="length"):
        Synthetic(length=0)
    with pytest.raises(ValueError, match="seed"):
        Synthetic(seed=-1)
    with pytest.raises(ValueError, match="num_shapes"):
        Synthetic(num_shapes=(3, 1))


def _best_pixel_f(model, batch, num_classes):
    with torch.no_grad():
        prob = torch.sigmoid(model(batch["image"]))
    target = batch["edges"] > 0.5
    scores = []
    for k in range(num_classes):
        best = 0.0
        for t in torch.linspace(0.05, 0.95, 19):
            pred = prob[:, k] > t
            tp = (pred & target[:, k]).sum().item()
            precision = tp / max(pred.sum().item(), 1)
            recall = tp / max(target[:, k].sum().item(), 1)
            best = max(best, 2 * precision * recall / max(precision + recall, 1e-9))
        scores.append(best)
    return sum(scores) / num_classes


@pytest.mark.slow
def test_small_cnn_learns_the_edges():
    torch.manual_seed(0)
    train = Synthetic(4, 32, length=96, seed=1)
    val_batch = next(iter(DataLoader(Synthetic(4, 32, length=32, seed=1, split="val"), 32)))
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(24, 4, 1),
    )
    before = _best_pixel_f(model, val_batch, 4)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = DataLoader(train, batch_size=16, shuffle=True)
    items = [b for b in loader]  # render once, reuse for every epoch
    for _ in range(5):
        for b in items:
            loss = reweighted_edge_loss(model(b["image"]), b["edges"], b["valid"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = _best_pixel_f(model, val_batch, 4)
    assert after > before + 0.2, (before, after)


def test_worker_processes_give_the_same_items():
    ds = Synthetic(3, 24, length=6, seed=4)
    single = list(DataLoader(ds, batch_size=3, num_workers=0))
    multi = list(DataLoader(ds, batch_size=3, num_workers=2))
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["edges"], b["edges"])
        assert a["name"] == b["name"]
