"""Export (maffsrn_jax.export) and exported-model runtimes (maffsrn_jax.runtimes).

One tiny model (x2, 1 FFG of 2 MABs: every op of the full model) is exported once per format
and precision; each artifact runs in its own runtime against the Flax model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from maffsrn_jax import convert, export, inference, ops, portable_ops, runtimes
from maffsrn_jax.models import MAFFSRN

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

TOL = 1e-4  # float32 artifact vs the Flax model
# float16: half-precision weights and activations on [0, 1] images with a float32 skip;
# measured ~5e-4 on this random-init model.
TOL_FP16 = 5e-3


def _ort():
    return pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime")


def _litert():
    pytest.importorskip("ai_edge_litert", reason="TFLite models run in ai-edge-litert")
    return pytest.importorskip("tensorflow", reason="TFLite export needs tensorflow")


@pytest.fixture(scope="module")
def tiny():
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    # Move the weight-norm gains and lambdas off their init so every parameter matters.
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, p: p * rng.uniform(0.5, 1.5, p.shape).astype(p.dtype)
        if path[-1].key in ("gain", "scale") else p,
        variables,
    )
    return model, variables


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("export")
    model, variables = tiny
    convert.save_state_dict(convert.flax_to_torch(model, variables), d / "tiny.safetensors")
    calib = d / "calib"
    calib.mkdir()
    for i in range(3):
        x = export.check_image((40 + 8 * i, 48))
        Image.fromarray((np.roll(x, 5 * i, axis=1) * 255).astype(np.uint8)).save(
            calib / f"{i}.png")
    return d


_REFERENCE: dict[tuple, np.ndarray] = {}


def _flax(tiny, x):
    """The Flax model's output, computed once per input (the tests share a few inputs)."""
    key = (x.shape, x.tobytes())
    if key not in _REFERENCE:
        model, variables = tiny
        _REFERENCE[key] = np.asarray(model.apply(variables, jnp.asarray(x)))
    return _REFERENCE[key]


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


# The inputs every format is checked on: the least size, and a batch of a non-square size.
SMALL = _rand(1, 13, 13, 3)
BATCH = _rand(3, 20, 27, 3, seed=1)


# ------------------------------------------------------------------------------ portable path


@pytest.mark.parametrize("in_out", [(3, 13), (5, 17), (7, 7), (4, 8), (9, 31)])
def test_nearest_resize_traced_indices_match_static(in_out):
    in_size, out_size = in_out
    want = ops.nearest_indices(in_size, out_size)
    got = np.asarray(jax.jit(ops._nearest_indices_traced, static_argnums=(0, 1))(
        in_size, out_size))
    np.testing.assert_array_equal(got, want)


def test_nearest_resize_exports_with_symbolic_sizes():
    from jax import export as jax_export

    (h, w) = jax_export.symbolic_shape("h, w")
    spec = jax.ShapeDtypeStruct((1, h, w, 2), jnp.float32)
    exp = jax_export.export(jax.jit(lambda x: ops.nearest_resize(x, (3 * h + 1, 2 * w))))(spec)
    x = _rand(1, 4, 5, 2)
    np.testing.assert_array_equal(np.asarray(exp.call(x)),
                                  np.asarray(ops.nearest_resize(x, (13, 10))))


def test_portable_ops_match_default():
    for s in (2, 3, 4):
        x = _rand(2, 13, 17, 3, seed=s)
        np.testing.assert_allclose(portable_ops.bicubic_upsample(x, s),
                                   ops.bicubic_upsample(x, s), atol=1e-5)
        y = _rand(2, 5, 6, 3 * s * s, seed=s)
        np.testing.assert_array_equal(portable_ops.pixel_shuffle(y, s), ops.pixel_shuffle(y, s))


def test_portable_model_matches_default(tiny):
    model, variables = tiny
    apply = jax.jit(model.clone(portable=True).apply)
    for x in (SMALL, BATCH):
        np.testing.assert_allclose(np.asarray(apply(variables, x)), _flax(tiny, x), atol=1e-5)


def test_portable_model_keeps_tensors_at_rank_4(tiny):
    from jax.extend.core import jaxprs_in_params

    model, variables = tiny
    jaxpr = jax.make_jaxpr(model.clone(portable=True).apply)(variables, _rand(1, 16, 16, 3))

    def ranks(jx):
        for eqn in jx.eqns:
            yield from (v.aval.ndim for v in eqn.outvars)
            for sub in jaxprs_in_params(eqn.params):
                yield from ranks(sub)

    assert max(ranks(jaxpr.jaxpr)) <= 4


# ---------------------------------------------------------------------------------- StableHLO


@pytest.fixture(scope="module")
def stablehlo_file(workdir, tiny):
    path = workdir / "tiny.stablehlo"
    export.export_stablehlo(*tiny, path)
    return path


def test_stablehlo_any_size_and_batch(stablehlo_file, tiny):
    artifact = runtimes.open_artifact(stablehlo_file)
    assert artifact.scale == 2
    for x in (SMALL, BATCH):
        np.testing.assert_allclose(artifact.run(x), _flax(tiny, x), atol=TOL)


def test_stablehlo_loads_without_the_package(stablehlo_file, tiny, tmp_path):
    x = BATCH[:2]
    np.save(tmp_path / "x.npy", x)
    # An environment may have the package installed (e.g. editable), so the child process
    # also blocks it on sys.meta_path: any import of it, direct or from jax.export, fails.
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'maffsrn_jax':\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import maffsrn_jax\n"
        "    raise SystemExit('maffsrn_jax importable')\n"
        "except ImportError:\n"
        "    pass\n"
        "import numpy as np\n"
        "from jax import export\n"
        f"blob = open({str(stablehlo_file)!r}, 'rb').read()\n"
        "y = export.deserialize(blob).call(np.load('x.npy'))\n"
        "np.save('y.npy', np.asarray(y))\n"
        "assert not any(m.split('.')[0] == 'maffsrn_jax' for m in sys.modules)\n"
    )
    # -I: no PYTHONPATH, no user site, and not the script's directory on sys.path; the cwd
    # is a fresh folder, so only the venv's packages are importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _flax(tiny, x), atol=TOL)


def test_stablehlo_rejects_small_input_naming_the_minimum(stablehlo_file):
    from jax import export as jax_export

    # Called directly, the deserialized module fails XLA's shape refinement (jax words that
    # error itself); through the runtimes the message names the minimum.
    exported = jax_export.deserialize(bytearray(stablehlo_file.read_bytes()))
    with pytest.raises(ValueError):
        exported.call(np.zeros((1, 12, 20, 3), np.float32))
    with pytest.raises(ValueError, match="13x13"):
        runtimes.open_artifact(stablehlo_file).run(np.zeros((1, 20, 12, 3), np.float32))


def test_stablehlo_float16(workdir, tiny):
    path = workdir / "tiny_float16.stablehlo"
    export.export_stablehlo(*tiny, path, precision="float16")
    np.testing.assert_allclose(runtimes.open_artifact(path).run(SMALL), _flax(tiny, SMALL),
                               atol=TOL_FP16)


def test_stablehlo_serves_cpu_and_cuda(stablehlo_file):
    from jax import export as jax_export

    exported = jax_export.deserialize(bytearray(stablehlo_file.read_bytes()))
    assert set(exported.platforms) == {"cpu", "cuda"}


# --------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_files(workdir, tiny):
    _ort()
    paths = {}
    for precision in ("float32", "float16"):
        paths[precision] = workdir / f"tiny_{precision}.onnx"
        export.export_onnx(*tiny, paths[precision], precision=precision)
    return paths


def test_onnx_float32_dynamic_sizes_and_batch(onnx_files, tiny):
    import onnx

    proto = onnx.load(onnx_files["float32"])
    assert [i.name for i in proto.graph.input] == ["lr"]
    assert [o.name for o in proto.graph.output] == ["sr"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["scale"] == "2"
    artifact = runtimes.open_artifact(onnx_files["float32"])
    for x in (SMALL, BATCH):
        np.testing.assert_allclose(artifact.run(x), _flax(tiny, x), atol=TOL)


def test_onnx_float16_keeps_float32_io(onnx_files, tiny):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_files["float16"]),
                                   providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    assert onnx_files["float16"].stat().st_size < 0.75 * onnx_files["float32"].stat().st_size
    x = BATCH
    got = runtimes.open_artifact(onnx_files["float16"]).run(x)
    np.testing.assert_allclose(got, _flax(tiny, x), atol=TOL_FP16)


def test_onnx_int8_calibrated(workdir, tiny):
    _ort()
    path = workdir / "tiny_int8.onnx"
    export.export_onnx(*tiny, path, precision="int8", calibration=str(workdir / "calib"))
    x = export.check_image((32, 32))[None]
    got = runtimes.open_artifact(path).run(x)
    # int8 is lossy; it must still be the model (mean error far below the signal's).
    err = np.abs(got - _flax(tiny, x))
    assert err.mean() < 0.01, err.mean()


def test_onnx_rejects_small_input(onnx_files):
    with pytest.raises(ValueError, match="13x13"):
        runtimes.open_artifact(onnx_files["float32"]).run(np.zeros((1, 12, 30, 3), np.float32))


# ------------------------------------------------------------------------------------- TFLite


@pytest.fixture(scope="module")
def tflite_file(workdir, tiny):
    _litert()
    path = workdir / "tiny.tflite"
    export.export_tflite(*tiny, path, input_size=(32, 32))
    return path


def test_tflite_fixed_size_and_tiled(tflite_file, tiny):
    model, variables = tiny
    artifact = runtimes.open_artifact(tflite_file)
    assert (artifact.scale, artifact.input_size) == (2, (32, 32))
    x = _rand(1, 32, 32, 3, seed=4)
    np.testing.assert_allclose(artifact.run(x), _flax(tiny, x), atol=TOL)
    # A larger image runs in 32x32 tiles (overlap 8), exactly as the Flax model tiled so.
    image = _rand(32, 56, 3, seed=5)
    want = inference.upscale_tiled(inference.model_fn(model, variables), image, scale=2,
                                   tile=32, overlap=8)
    np.testing.assert_allclose(runtimes.upscale_fn(artifact)(image), want, atol=TOL)


def test_tflite_ops_stay_at_rank_4(tflite_file):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_file))
    assert max(len(t["shape"]) for t in interpreter.get_tensor_details()) <= 4


def test_tflite_looks_gpu_delegate_compatible(tflite_file, capfd):
    # TF's analyzer checks each op against the GPU delegate's rules; it does not check
    # tensor ranks, which test_tflite_ops_stay_at_rank_4 does.
    tf = _litert()
    tf.lite.experimental.Analyzer.analyze(model_path=str(tflite_file), gpu_compatibility=True)
    assert "looks compatible with GPU delegate" in capfd.readouterr().out


def test_tflite_rejects_other_sizes(tflite_file):
    with pytest.raises(ValueError, match="32x32 inputs only"):
        runtimes.open_artifact(tflite_file).run(np.zeros((1, 40, 40, 3), np.float32))


def test_tflite_float16(workdir, tiny):
    _litert()
    path = workdir / "tiny_float16.tflite"
    export.export_tflite(*tiny, path, precision="float16", input_size=(32, 32))
    x = _rand(1, 32, 32, 3, seed=4)
    np.testing.assert_allclose(runtimes.open_artifact(path).run(x), _flax(tiny, x),
                               atol=TOL_FP16)


def test_tflite_int8_calibrated(workdir, tiny):
    _litert()
    path = workdir / "tiny_int8.tflite"
    export.export_tflite(*tiny, path, precision="int8", calibration=str(workdir / "calib"),
                         input_size=(32, 32))
    x = export.check_image((32, 32))[None]
    err = np.abs(runtimes.open_artifact(path).run(x) - _flax(tiny, x))
    assert err.mean() < 0.01, err.mean()


# ------------------------------------------------------------------------------------ command


def _main(argv, capsys):
    code = export.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_command_writes_and_reports(workdir, capsys):
    out_path = workdir / "cmd.stablehlo"
    code, out, err = _main(["--checkpoint", str(workdir / "tiny.safetensors"),
                            "--format", "stablehlo", "--output", str(out_path)], capsys)
    assert code == 0, err
    size = out_path.stat().st_size
    assert f"{size:,} bytes" in out and str(out_path) in out
    diff = float(out.rsplit(":", 1)[1])
    assert diff <= TOL


@pytest.mark.parametrize("extra, message", [
    (["--format", "pdf", "--output", "{d}/m.pdf"], "--format must be one of"),
    (["--format", "onnx", "--precision", "int8", "--output", "{d}/m.onnx"],
     "needs --calibration"),
    (["--format", "onnx", "--precision", "int8", "--calibration", "{d}/none",
      "--output", "{d}/m.onnx"], "no such directory"),
    (["--format", "stablehlo", "--precision", "int8", "--calibration", "{d}",
      "--output", "{d}/m.stablehlo"], "int8 is for onnx and tflite"),
    (["--format", "onnx", "--output", "{d}/missing/m.onnx"], "does not exist"),
    (["--format", "onnx", "--output", "{d}"], "is a directory"),
    (["--format", "onnx", "--output", "{d}/m.tflite"], "must end in .onnx"),
    (["--format", "tflite", "--input-size", "8x8", "--output", "{d}/m.tflite"],
     "at least 13"),
])
def test_command_bad_input_one_line_no_file(workdir, tmp_path, capsys, extra, message):
    argv = ["--checkpoint", str(workdir / "tiny.safetensors")]
    argv += [a.format(d=tmp_path) for a in extra]
    code, out, err = _main(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_leaves_no_file(workdir, tiny, tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    # A directory where the file should go cannot be replaced by it (even as root).
    (target / "m.stablehlo").mkdir()
    with pytest.raises(export.ExportError, match="cannot write"):
        export.export_stablehlo(*tiny, target / "m.stablehlo")
    assert [p.name for p in target.iterdir()] == ["m.stablehlo"]


# ------------------------------------------------------------------- eval.py and the upscaler


def test_eval_and_upscale_run_artifacts(onnx_files, tflite_file, tiny, tmp_path, capsys):
    import eval as eval_script
    from maffsrn_jax import evaluation, upscale

    model, variables = tiny
    data = tmp_path / "set"
    (data / "HR").mkdir(parents=True)
    hr = (export.check_image((48, 64)) * 255).astype(np.uint8)
    Image.fromarray(hr).save(data / "HR" / "a.png")
    scores = {}
    for name, ckpt in [("onnx", onnx_files["float32"]), ("tflite", tflite_file)]:
        report = tmp_path / f"{name}.json"
        code = eval_script.main(["--checkpoint", str(ckpt), "--scale", "2",
                                 "--data", f"T={data}", "--json", str(report)])
        assert code == 0, capsys.readouterr().err
        scores[name] = json.loads(report.read_text())["T"]["psnr"]
    # The ONNX model is the Flax model: the same LR image through both gives the same score.
    ckpt = tmp_path / "tiny.safetensors"
    convert.save_state_dict(convert.flax_to_torch(model, variables), ckpt)
    samples = evaluation.find_samples(data, 2)
    upscaler = evaluation.model_upscaler(str(ckpt), 2, tile=None)
    flax_psnr = evaluation.evaluate(upscaler, samples, 2)[0]["psnr"]
    assert abs(scores["onnx"] - flax_psnr) < 0.01
    assert abs(scores["tflite"] - flax_psnr) < 0.5  # tiled at 32x32

    out = tmp_path / "up.png"
    code = upscale.main(["--checkpoint", str(tflite_file), "--input", str(data / "HR" / "a.png"),
                         "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (128, 96)
    # A wrong --scale for the artifact is one error line.
    code = eval_script.main(["--checkpoint", str(onnx_files["float32"]), "--scale", "3",
                             "--data", f"T={data}"])
    err = capsys.readouterr().err
    assert code == 2 and "exported model is x2" in err and err.count("\n") == 1
