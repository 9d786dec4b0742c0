"""x4 on a 256x256 image in the browser page beside ONNX Runtime in Python and the JAX upscaler.

A development harness, run from a checkout after `npm ci` in web/ (Chromium at
/usr/bin/chromium or $CHROMIUM_PATH):

    python -m benchmarks.web_bench                         # shipped maffsrn_x4, else random init
    python -m benchmarks.web_bench --site site/ --checkpoint maffsrn_x4 --repeat 5 --json w.json

Sides, all on one machine and the same x4 weights (speed does not depend on their values: a
random-init full-size model stands in where no x4 weights are shipped):
  page wasm-1, wasm-2   the built page in headless Chromium (web/driver.mjs), ONNX Runtime Web
                        on WASM with 1 and 2 threads (`&backend=wasm&threads=N`);
  page webgpu           the same on WebGPU, where Chromium offers an adapter (else n/a);
  onnxruntime           the page's own .onnx file in Python's ONNX Runtime (CPU, all cores);
  jax                   `maffsrn_jax.upscale.upscale_image` (jitted, all cores).
Each page side opens the page once, cold (`?src=...&scale=4`), then upscales the same image
`--repeat` more times in that page (warm). Reported: the median warm model time (the
session.run calls) and whole-upscale time (decode, tiles, blending, PNG encoding), the cold
run, the page's load time (navigation to the worker holding ONNX Runtime and the x4 session)
and the bytes transferred by then and after the first result. Python sides: median of
`--repeat` runs after one warm-up, pixels in and out as the upscaler does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "web" / "driver.mjs"


def _checkpoint(given: str | None, tmp: Path) -> tuple[str, str]:
    """(x4 checkpoint, how it was chosen)."""
    from maffsrn_jax.pretrained import pretrained_names

    if given:
        return given, given
    if "maffsrn_x4" in pretrained_names():
        return "maffsrn_x4", "shipped maffsrn_x4"
    import jax

    from maffsrn_jax import convert
    from maffsrn_jax.models import MAFFSRN

    model = MAFFSRN(scale=4)
    variables = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    path = tmp / "x4_random.safetensors"
    convert.save_state_dict(convert.flax_to_torch(model, variables), path)
    return str(path), "random-init full-size x4 (no x4 weights shipped)"


def _page_side(url: str, repeat: int, webgpu: bool) -> dict:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("error: the page sides need Node.js")
    cmd = [node, str(DRIVER), "--url", url, "--timeout", "600", "--rerun", "bench.png",
           "--rerun-scale", "4", "--repeat", str(repeat)]
    if webgpu:
        cmd.append("--webgpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[:300]}
    run = json.loads(proc.stdout)
    if run["title"] != "done":
        return {"error": run["title"]}
    stats, warm = run["stats"], run["reruns"]
    first = stats["last"]
    return {
        "backend": first["backend"], "threads": first["threads"],
        "model_ms": statistics.median(r["inferenceMs"] for r in warm),
        "total_ms": statistics.median(r["totalMs"] for r in warm),
        "cold_total_ms": first["totalMs"],
        "load_ms": stats["readyMs"], "load_bytes": stats["readyBytes"],
        "bytes_after_first_result": first["bytes"] + first["pageBytes"],
    }


def _python_sides(onnx_file: Path, checkpoint: str, image: np.ndarray, repeat: int) -> dict:
    from maffsrn_jax import convert, runtimes, upscale

    def timed(fn) -> float:
        fn()  # warm-up: compilation, first-run allocations
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    ort_fn, scale = runtimes.load_upscaler(str(onnx_file))
    model, variables = convert.load_pretrained(checkpoint)
    return {
        "onnxruntime": {"total_ms": timed(
            lambda: upscale.upscale_image_with(ort_fn, scale, image))},
        "jax": {"total_ms": timed(lambda: upscale.upscale_image(model, variables, image))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", help="a built site (default: build one from --checkpoint)")
    parser.add_argument("--checkpoint", help="x4 weights (default: shipped, else random init)")
    parser.add_argument("--size", type=int, default=256, help="input side (default: 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    from maffsrn_jax import export
    from maffsrn_jax.web import server, site

    with tempfile.TemporaryDirectory(prefix="maffsrn-web-bench-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint, weights = _checkpoint(args.checkpoint, tmp)
        served = tmp / "site"
        if args.site:
            shutil.copytree(args.site, served)
        else:
            site.build(served, {4: checkpoint})
        image = np.round(export.check_image((args.size, args.size)) * 255).astype(np.uint8)
        Image.fromarray(image).save(served / "bench.png")
        httpd = server.make_server(served, 0, quiet=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}/?src=bench.png&scale=4"
        figures = {"weights": weights, "size": args.size, "cpus": os.cpu_count(),
                   "chromium": subprocess.run(
                       [os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"), "--version"],
                       capture_output=True, text=True).stdout.strip()}
        for name, query, gpu in [("page wasm-1", "&backend=wasm&threads=1", False),
                                 ("page wasm-2", "&backend=wasm&threads=2", False),
                                 ("page webgpu", "&backend=webgpu", True)]:
            figures[name] = _page_side(base + query, args.repeat, gpu)
            print(name, json.dumps(figures[name]), flush=True)
        httpd.shutdown()
        figures.update(_python_sides(served / "models" / "maffsrn_x4.onnx", checkpoint, image,
                                     args.repeat))

    print(f"\nx4 on {args.size}x{args.size}, {weights}; {figures['chromium']}, "
          f"{figures['cpus']} CPUs")
    print(f"{'side':<14}{'model ms':>10}{'total ms':>10}{'cold ms':>10}{'load ms':>9}"
          f"{'load MB':>9}")
    for name in ("page wasm-1", "page wasm-2", "page webgpu", "onnxruntime", "jax"):
        f = figures[name]
        if "error" in f:
            print(f"{name:<14}  n/a: {f['error']}")
            continue
        cells = [f.get("model_ms"), f["total_ms"], f.get("cold_total_ms"), f.get("load_ms")]
        text = "".join(f"{c:>10.0f}" if c is not None else f"{'-':>10}" for c in cells)
        mb = f"{f['load_bytes'] / 1e6:>9.1f}" if "load_bytes" in f else f"{'-':>9}"
        print(f"{name:<14}{text}{mb}")
    if args.json:
        from maffsrn_jax.files import write_json_atomic

        write_json_atomic(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
