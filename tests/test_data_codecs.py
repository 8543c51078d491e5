"""Edge label codecs: bit layout, round trips, file I/O and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynfuse.data.codecs import (
    EdgeLabelError,
    decode_edge_bin,
    decode_edge_png,
    encode_edge_bin,
    encode_edge_png,
    read_edge_bin,
    read_edge_png,
    write_edge_bin,
    write_edge_png,
)


def random_edges(k, h, w, seed=0, p=0.3):
    return np.random.default_rng(seed).random((k, h, w)) < p


def test_png_bit_layout():
    edges = np.zeros((24, 1, 5), dtype=bool)
    edges[0, 0, 0] = True  # blue bit 0
    edges[8, 0, 1] = True  # green bit 0
    edges[16, 0, 2] = True  # red bit 0
    edges[23, 0, 3] = True  # red bit 7
    edges[[1, 9, 18], 0, 4] = True
    rgb = encode_edge_png(edges)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0].tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0], [128, 0, 0], [4, 2, 2]]
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    value = (r << 16) | (g << 8) | b
    for c in range(24):
        np.testing.assert_array_equal((value >> c) & 1, edges[c].astype(np.uint32))


def test_png_matches_the_authors_unpackbits_reading():
    # The authors read K classes as np.unpackbits(rgb, axis=2)[:, :, -1:-(K+1):-1].
    edges = random_edges(19, 7, 9, seed=1)
    rgb = encode_edge_png(edges)
    theirs = np.unpackbits(rgb, axis=2)[:, :, -1:-20:-1].transpose(2, 0, 1).astype(bool)
    np.testing.assert_array_equal(theirs, edges)


@pytest.mark.parametrize("k", [1, 5, 19, 20, 24])
def test_png_round_trip(k):
    edges = random_edges(k, 11, 13, seed=k)
    decoded = decode_edge_png(encode_edge_png(edges), k)
    assert decoded.dtype == np.bool_ and decoded.shape == (k, 11, 13)
    np.testing.assert_array_equal(decoded, edges)
    # Decoding fewer classes drops the higher bits; torch and {0,1} inputs encode the same.
    np.testing.assert_array_equal(decode_edge_png(encode_edge_png(edges), 1), edges[:1])
    np.testing.assert_array_equal(encode_edge_png(torch.from_numpy(edges)), encode_edge_png(edges))
    np.testing.assert_array_equal(encode_edge_png(edges.astype(np.float32)), encode_edge_png(edges))


def test_png_file_round_trip_and_errors(tmp_path):
    edges = random_edges(20, 17, 23, seed=3)
    path = tmp_path / "sub" / "a_edge.png"
    write_edge_png(path, edges)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (23, 17)
    np.testing.assert_array_equal(read_edge_png(path, 20), edges)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(EdgeLabelError, match="broken.png"):
        read_edge_png(broken, 20)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(grey)
    with pytest.raises(EdgeLabelError, match="grey.png.*mode L"):
        read_edge_png(grey, 20)
    with pytest.raises(EdgeLabelError, match="missing.png"):
        read_edge_png(tmp_path / "missing.png", 20)


def test_bin_layout_and_round_trip(tmp_path):
    edges = random_edges(31, 6, 8, seed=4)
    ignore = np.random.default_rng(5).random((6, 8)) < 0.2
    label = encode_edge_bin(edges, ignore)
    assert label.dtype == np.uint32
    assert np.all(label[ignore] == np.uint32(1 << 31))  # no class bits on ignored pixels
    want = np.zeros((6, 8), dtype=np.uint64)
    for c in range(31):
        want |= edges[c].astype(np.uint64) << np.uint64(c)
    np.testing.assert_array_equal(label[~ignore], want[~ignore].astype(np.uint32))
    dec_edges, dec_ignore = decode_edge_bin(label, 31)
    np.testing.assert_array_equal(dec_ignore, ignore)
    np.testing.assert_array_equal(dec_edges[:, ~ignore], edges[:, ~ignore])
    assert not dec_edges[:, ignore].any()

    path = tmp_path / "x.bin"
    write_edge_bin(path, edges[:19], ignore)
    assert path.stat().st_size == 6 * 8 * 4
    raw = np.fromfile(path, dtype="<u4").reshape(6, 8)
    assert raw[0, 0] == encode_edge_bin(edges[:19], ignore)[0, 0]
    e2, i2 = read_edge_bin(path, 19, (6, 8))
    np.testing.assert_array_equal(i2, ignore)
    np.testing.assert_array_equal(e2[:, ~ignore], edges[:19, ~ignore])
    with pytest.raises(EdgeLabelError, match=r"x.bin.*expected 42"):
        read_edge_bin(path, 19, (6, 7))


def test_bad_arguments():
    with pytest.raises(ValueError, match="edges"):
        encode_edge_png(np.zeros((25, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="edges"):
        encode_edge_png(np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="edges"):
        encode_edge_png(np.full((2, 2, 2), 2))
    with pytest.raises(ValueError, match="num_classes"):
        decode_edge_png(np.zeros((2, 2, 3), dtype=np.uint8), 25)
    with pytest.raises(TypeError, match="rgb"):
        decode_edge_png(np.zeros((2, 2, 3), dtype=np.int32), 3)
    with pytest.raises(ValueError, match="rgb"):
        decode_edge_png(np.zeros((2, 2, 4), dtype=np.uint8), 3)
    with pytest.raises(ValueError, match="edges"):
        encode_edge_bin(np.zeros((32, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="ignore"):
        encode_edge_bin(np.zeros((3, 2, 2), dtype=bool), np.zeros((2, 3), dtype=bool))
    with pytest.raises(TypeError, match="label"):
        decode_edge_bin(np.zeros((2, 2), dtype=np.int64), 3)
