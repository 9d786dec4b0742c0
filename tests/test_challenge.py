"""The efficient-SR challenges' counts and runtime protocol (`profile --protocol challenge`).

Counts are abstract (nothing compiles); the protocol runs a 1-FFG, 2-MAB model on two small
sizes. Timing is never asserted, only the report's schema and bookkeeping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from maffsrn_jax import counts, image_io, profile
from maffsrn_jax.models import MAFFSRN

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow


def _hand_counts(scale: int, h: int, w: int, n_ffgs: int, n_mabs: int = 4) -> dict[str, int]:
    """The official layer list multiplied out by hand (n_feats C = 32, ESA width r = 8).

    MAB: conv01 3x3 C->C + LeakyReLU module, conv00 3x3 C->C, reduce_channels 1x1 C->r,
    reduce_spatial_size 3x3/2 r->r (padding 1), max pool 7x7/3 (functional), conv1 3x3 r->r
    + LeakyReLU module and conv2 dilated 3x3 r->r + LeakyReLU module on the pooled map,
    increase_channels 1x1 r->C + ReLU module (conv_block's default act), bottom11 1x1 C->C,
    bottom11_dw depthwise 5x5; sigmoids, nearest upsampling, products: functional, free.
    FFG: n_mabs MABs and n_mabs - 1 weight-normed 1x1 2C->C reductions. Head: 3x3 3->C.
    Tail: 3x3 and 5x5 C->3s^2; pixel shuffle and the bicubic skip are free.
    """
    c, r = 32, 8
    px = h * w
    hs, ws = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    hp, wp = (hs - 7) // 3 + 1, (ws - 7) // 3 + 1
    out = 3 * scale * scale
    mab_macs = (
        px * 2 * 9 * c * c + px * c * r + hs * ws * 9 * r * r + hp * wp * 2 * 9 * r * r
        + px * r * c + px * c * c + px * 25 * c
    )
    mab_relu = px * c + 2 * hp * wp * r + px * c  # conv01, conv1 + conv2, increase_channels
    mab_outputs = px * (c + c + r + c + c + c) + hs * ws * r + 2 * hp * wp * r
    ffg_macs = n_mabs * mab_macs + (n_mabs - 1) * px * 2 * c * c
    ffg_outputs = n_mabs * mab_outputs + (n_mabs - 1) * px * c
    macs = px * 9 * 3 * c + n_ffgs * ffg_macs + px * (9 + 25) * c * out
    return {
        "challenge_flops": macs + n_ffgs * n_mabs * mab_relu,
        "activations": px * c + n_ffgs * ffg_outputs + 2 * px * out,
        "num_convs": 1 + n_ffgs * (9 * n_mabs + n_mabs - 1) + 2,
    }


@pytest.mark.parametrize("n_ffgs, scale", [(4, 2), (4, 3), (4, 4), (8, 2), (8, 3), (8, 4)])
def test_challenge_counts_equal_a_hand_count_of_the_layers(n_ffgs, scale):
    model = MAFFSRN(scale, n_ffgs=n_ffgs)
    assert counts.challenge_counts(model) == _hand_counts(scale, 256, 256, n_ffgs)


def test_challenge_counts_x4_256_against_aim2020():
    got = counts.challenge_counts(MAFFSRN(4))
    # 27,048,593,408 conv multiply-adds (the paper's 27.05 G) + 16 MABs x (2 x 32 x 256^2 +
    # 2 x 8 x 41^2) = 67,539,200 LeakyReLU/ReLU outputs. AIM 2020's table prints 27.11 G.
    assert got["challenge_flops"] == 27_048_593_408 + 67_539_200 == 27_116_132_608
    assert got["num_convs"] == 159  # head, 4 x (4 x 9 + 3), two tail convs
    assert got["activations"] == 212_242_688


def test_challenge_counts_on_odd_sizes_and_small_models():
    model = MAFFSRN(3, n_ffgs=2, n_mabs=3)
    assert counts.challenge_counts(model, (1, 29, 40, 3)) == _hand_counts(3, 29, 40, 2, 3)
    # A 1x1 written as a matmul still counts as the convolution it is.
    calls = counts.conv_calls(model, (1, 29, 40, 3))
    assert sum(c.kernel_size == 1 for c in calls) == 2 * (3 * 3 + 2)
    assert {c.activation for c in calls} == {None, "LeakyReLU", "ReLU"}


# --- the runtime and memory protocol ----------------------------------------------------------

TINY_CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(scale=4, n_ffgs=1, n_mabs=2))
    return c
"""


def test_stand_ins_alternate_div2k_sizes():
    images, stand_ins = profile.challenge_images(None, scale=4, limit=3)
    assert stand_ins is True
    assert [im.shape for _, im in images] == [(339, 510, 3), (510, 339, 3), (339, 510, 3)]
    assert all(im.dtype == np.float32 and 0 <= im.min() and im.max() < 1 for _, im in images)
    assert len(profile.challenge_images(None, scale=4)[0]) == 100


def test_protocol_json_on_a_tiny_model_and_two_sizes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X4"
    data.mkdir(parents=True)
    for name, hw in (("0801x4.png", (13, 17)), ("0802x4.png", (16, 13)), ("0803x4.png", (13, 17))):
        image_io.save_image(data / name, rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "challenge.json"
    argv = ["--config", str(config), "--protocol", "challenge", "--data", str(tmp_path / "DIV2K"),
            "--json", str(out), "--malloc-defaults"]
    assert profile.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["protocol"] == "challenge" and report["stand_ins"] is False
    assert report["images"] == 3 and len(report["runtime_ms"]) == 3
    assert [(s["size"], s["images"]) for s in report["sizes"]] == [([13, 17], 2), ([16, 13], 1)]
    for s in report["sizes"]:
        assert s["compile_s"] > 0 and s["xla_peak_memory_bytes"] > 0
    assert report["compile_s"] == pytest.approx(sum(s["compile_s"] for s in report["sizes"]),
                                                 abs=2e-3)
    assert report["runtime_ms_mean"] == pytest.approx(np.mean(report["runtime_ms"]), abs=2e-3)
    assert report["runtime_ms_median"] == pytest.approx(np.median(report["runtime_ms"]), abs=2e-3)
    # On CPU the peak is XLA's analysis of the larger program; on a GPU the allocator's.
    if report["device"].startswith("cpu"):
        assert report["peak_memory_bytes"] == max(s["xla_peak_memory_bytes"]
                                                  for s in report["sizes"])
    assert isinstance(report["peak_memory_bytes"], int) and report["peak_memory_method"]
    model = MAFFSRN(4, n_ffgs=1, n_mabs=2)
    assert report["count_input_shape"] == [1, 256, 256, 3]
    want = counts.challenge_counts(model)
    assert {k: report[k] for k in want} == want
    assert report["params"] == counts.param_count(model)
    assert "challenge protocol" in capsys.readouterr().out
    # --limit keeps the first images in name order.
    images, _ = profile.challenge_images(tmp_path / "DIV2K", 4, limit=2)
    assert [name for name, _ in images] == ["0801x4.png", "0802x4.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--protocol", "challenge", "--train"], "--train"),
        (["--protocol", "challenge", "--input-size", "64x64"], "--input-size"),
        (["--protocol", "challenge", "--limit", "0"], "--limit"),
        (["--protocol", "challenge", "--data", "/nonexistent/div2k"], "no such folder"),
        (["--data", "/tmp"], "--protocol challenge"),
        (["--protocol", "nope"], "--protocol"),
    ],
)
def test_protocol_bad_flags_give_one_line(argv, message, capsys):
    assert profile.main([*argv, "--malloc-defaults"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
