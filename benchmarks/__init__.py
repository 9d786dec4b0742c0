"""The project's development harnesses, run from a checkout (not part of the installed package).

    python -m benchmarks.speed ...          # JAX beside PyTorch, ONNX Runtime and LiteRT
    python -m benchmarks.bench input ...    # input pipeline throughput
    python -m benchmarks.bench faults ...   # the checkout's train.py under SIGKILL

They use the package (`maffsrn_jax.profile` holds the benchmarked programs and the flags they
share); the package never imports them.
"""
