"""MAFFSRN in the browser: a static page that upscales images on the visitor's own machine.

    python -m maffsrn_jax.web build --output site/     # the page, ONNX Runtime Web, the models
    python -m maffsrn_jax.web serve site/ --port 8000  # http://127.0.0.1:8000/

`build` (`maffsrn_jax.web.site`) writes a folder any static host can serve: the page
(`static/`: HTML, CSS and ES modules), ONNX Runtime Web's files copied from the npm package
that `web/package-lock.json` pins (never a CDN at run time) and the ×2/×3/×4 models exported
to ONNX from the shipped weights (or the checkpoints given). `serve` (`maffsrn_jax.web.server`)
serves such a folder on 127.0.0.1 with the cross-origin isolation headers that multi-threaded
WASM needs. The page tiles, blends and quantises as `maffsrn_jax.upscale` does, so its PNG
equals the Python upscaler's to within one level (docs/web.md).
"""
