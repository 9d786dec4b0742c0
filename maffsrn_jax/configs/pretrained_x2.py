"""Stage 1 of the shipped MAFFSRN x2 weights (`maffsrn_x2`; stage 2 is `pretrained_x2_stage2`).

Data: T91 + BSDS500 train/test (`python -m maffsrn_jax.data.train491 ... --output
data/train491`), LR made by MATLAB-bicubic from HR; validation on Set5 (HR only, a folder or
the benchmark layout, at `data/benchmarks/Set5`). Override either with `--config.data.dir` /
`--config.data.val_dir`.

As the paper: 48x48 LR patches, batch 16, flips and transposes, L1, AdamP (0.9, 0.999, 1e-8,
no weight decay), lr halved four times at equal intervals. The paper's 1 M steps would take
two weeks on a 2-core CPU, so the schedule is compressed to the run's length: the same four
halvings at 20/40/60/80 % of `num_train_steps`. A run this short is far from converged at the
paper's 2e-4 (tuned for 1 M steps); it starts at 1e-3, stable with AdamP at batch 16, so the
last fifth trains at 6.25e-5.
"""

from maffsrn_jax.configs import default

STEPS = 5_000


def get_config():
    c = default.get_config()
    c.model.scale = 2
    c.data.source = "folder"
    c.data.dir = "data/train491"
    c.data.val_dir = "data/benchmarks/Set5"
    c.num_train_steps = STEPS
    c.learning_rate = 1e-3
    c.lr_decay_steps = STEPS // 5
    c.lr_decay_factor = 0.5
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    c.keep_checkpoints = 2
    return c
