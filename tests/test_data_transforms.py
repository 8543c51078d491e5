"""Joint transforms: geometry of image / edges / valid, padding, determinism."""

from __future__ import annotations

import pytest
import torch

from dynfuse.data.transforms import (
    IMAGENET_MEAN,
    CenterCrop,
    Compose,
    Normalize,
    PadTo,
    RandomCrop,
    RandomMirror,
    RandomScale,
    Resize,
    train_transforms,
    val_transforms,
)


def make_sample(h=13, w=19, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, h, w, generator=gen),
        "edges": torch.rand(k, h, w, generator=gen) < 0.2,
        "valid": torch.rand(h, w, generator=gen) < 0.9,
        "name": "x",
    }


def test_mirror_flips_all_three():
    s = make_sample()
    out = RandomMirror(p=1.0)(s)
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["edges"], s["edges"].flip(-1))
    assert torch.equal(out["valid"], s["valid"].flip(-1))
    assert out["name"] == "x"
    assert RandomMirror(p=0.0)(s) is s


def test_pad_is_mean_and_invalid_and_zero_after_normalize():
    s = make_sample(7, 9)
    out = PadTo((10, 12))(s)
    assert out["image"].shape == (3, 10, 12)
    assert torch.equal(out["image"][:, :7, :9], s["image"])
    assert torch.equal(out["edges"][:, :7, :9], s["edges"])
    assert not out["edges"][:, 7:].any() and not out["edges"][:, :, 9:].any()
    assert not out["valid"][7:].any() and not out["valid"][:, 9:].any()
    normed = Normalize()(out)["image"]
    assert torch.all(normed[:, 7:] == 0) and torch.all(normed[:, :, 9:] == 0)
    want = (s["image"] - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        (0.229, 0.224, 0.225)
    ).view(3, 1, 1)
    torch.testing.assert_close(normed[:, :7, :9], want)


def test_random_crop_is_a_window_and_deterministic():
    s = make_sample(21, 17)
    crop = RandomCrop((8, 11))
    a = crop(s, generator=torch.Generator().manual_seed(3))
    b = crop(s, generator=torch.Generator().manual_seed(3))
    for key in ("image", "edges", "valid"):
        assert torch.equal(a[key], b[key])
    assert a["image"].shape == (3, 8, 11) and a["edges"].shape == (3, 8, 11)
    # Find the window and check that all three tensors were cut at the same place.
    found = [
        (t, l)
        for t in range(21 - 8 + 1)
        for l in range(17 - 11 + 1)
        if torch.equal(s["image"][:, t : t + 8, l : l + 11], a["image"])
    ]
    assert len(found) == 1
    t, l = found[0]
    assert torch.equal(s["edges"][:, t : t + 8, l : l + 11], a["edges"])
    assert torch.equal(s["valid"][t : t + 8, l : l + 11], a["valid"])
    # Different seeds eventually pick different windows.
    windows = {
        tuple(crop(s, generator=torch.Generator().manual_seed(i))["image"][0, 0, :2].tolist())
        for i in range(20)
    }
    assert len(windows) > 1


def test_crop_pads_small_inputs():
    s = make_sample(5, 6)
    out = RandomCrop(9)(s, generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 9, 9)
    assert out["valid"].sum() == s["valid"].sum()  # the whole input is inside, padding invalid
    c = CenterCrop((4, 4))(make_sample(8, 10))
    assert c["image"].shape == (3, 4, 4)
    assert torch.equal(c["image"], make_sample(8, 10)["image"][:, 2:6, 3:7])


def test_random_scale_short_side_and_scales():
    s = make_sample(12, 20)
    for seed in range(5):
        out = RandomScale(short_side=(6, 30))(s, generator=torch.Generator().manual_seed(seed))
        h, w = out["image"].shape[1:]
        assert 6 <= h <= 30 and w == int(20 * h / 12)
        assert out["edges"].shape == (3, h, w) and out["valid"].shape == (h, w)
        assert out["edges"].dtype == torch.bool and out["valid"].dtype == torch.bool
        assert 0 <= out["image"].min() and out["image"].max() <= 1
    tall = make_sample(20, 12)
    out = RandomScale(short_side=(24, 24))(tall)
    assert out["image"].shape[1:] == (40, 24)
    scale = RandomScale(scales=(0.5, 2.0))
    gens = [torch.Generator().manual_seed(i) for i in range(20)]
    sizes = {tuple(scale(s, generator=g)["image"].shape) for g in gens}
    assert sizes == {(3, 6, 10), (3, 24, 40)}


def test_nearest_label_resize_integer_upscale_repeats_pixels():
    s = make_sample(4, 5)
    out = Resize((8, 10))(s)
    rep = s["edges"].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(out["edges"], rep)
    assert torch.equal(out["valid"], s["valid"].repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_pipeline_deterministic_under_generator_and_global_seed():
    s = make_sample(30, 41)
    pipe = train_transforms(16, short_side=(12, 40))
    a = pipe(s, generator=torch.Generator().manual_seed(5))
    b = pipe(s, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in ("image", "edges", "valid"))
    torch.manual_seed(9)
    c = pipe(s)
    torch.manual_seed(9)
    d = pipe(s)
    assert all(torch.equal(c[k], d[k]) for k in ("image", "edges", "valid"))
    assert a["image"].shape == (3, 16, 16)
    assert val_transforms()(s) is s
    assert val_transforms(10)(s)["image"].shape == (3, 10, 10)
    assert "RandomCrop" in repr(pipe)


def test_bad_arguments_and_samples():
    with pytest.raises(ValueError, match="exactly one"):
        RandomScale()
    with pytest.raises(ValueError, match="exactly one"):
        RandomScale(short_side=(1, 2), scales=(1.0,))
    with pytest.raises(ValueError, match="short_side"):
        RandomScale(short_side=(10, 5))
    with pytest.raises(ValueError, match="scales"):
        RandomScale(scales=(0.0,))
    with pytest.raises(TypeError, match="size"):
        RandomCrop("big")
    with pytest.raises(ValueError, match="size"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="p"):
        RandomMirror(1.5)
    with pytest.raises(TypeError, match="transforms"):
        Compose([1])
    bad = make_sample()
    bad["edges"] = bad["edges"].float()
    with pytest.raises(ValueError, match="edges"):
        RandomMirror(1.0)(bad)
    with pytest.raises(ValueError, match="missing"):
        RandomMirror(1.0)({"image": torch.zeros(3, 2, 2)})
