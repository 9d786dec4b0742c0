"""The package's command-line tools and the code they share.

    python -m maffsrn_jax.profile ...   # maffsrn_jax.tools.profile: counts, memory, latency
    python -m maffsrn_jax.speed ...     # maffsrn_jax.tools.speed: JAX beside PyTorch (and ONNX)
    python -m maffsrn_jax.bench input   # maffsrn_jax.tools.bench: input pipeline throughput
    python -m maffsrn_jax.bench faults  # maffsrn_jax.tools.faults: training under SIGKILL
    python -m maffsrn_jax.tools.trace_summary DIR   # op time per HLO op kind of a --trace

`common` holds what more than one command uses (flag parsing, the benchmark train step,
page-fault and device reports) and `counts` the model's operation counts; neither is a
command. The old module paths (`maffsrn_jax.profile`, ...) stay importable and runnable.
"""
