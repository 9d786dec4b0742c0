"""`python -m maffsrn_jax.web build|serve`: see `maffsrn_jax.web`."""

from __future__ import annotations

import argparse
import sys

from maffsrn_jax.errors import run_cli
from maffsrn_jax.web import server, site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maffsrn_jax.web",
        description="Build or serve the MAFFSRN upscaler web page.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser(
        "build", help="write the static site (page, ONNX Runtime Web, ONNX models)",
        description=site.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--output", required=True, metavar="DIR",
                       help="folder to write (replaced whole if it holds an earlier build)")
    for scale in site.SCALES:
        build.add_argument(f"--checkpoint-x{scale}", metavar="CKPT",
                           help=f"x{scale} weights: a checkpoint path or shipped name "
                           f"(default: maffsrn_x{scale}, when shipped)")
    build.add_argument("--onnxruntime-web", metavar="DIR",
                       help="onnxruntime-web's dist/ folder (default: web/node_modules/"
                       "onnxruntime-web/dist of this checkout, installed by `npm ci`)")
    serve = sub.add_parser("serve", help="serve a built site on 127.0.0.1",
                           description=server.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("directory", metavar="DIR", help="a folder written by `build`")
    serve.add_argument("--port", type=int, default=8000,
                       help="port on 127.0.0.1; 0 picks a free one (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.command == "build":
        checkpoints = {s: getattr(args, f"checkpoint_x{s}") for s in site.SCALES}
        return run_cli(lambda: site.main(args.output, checkpoints, args.onnxruntime_web))
    return run_cli(lambda: server.serve(args.directory, args.port))


if __name__ == "__main__":
    sys.exit(main())
