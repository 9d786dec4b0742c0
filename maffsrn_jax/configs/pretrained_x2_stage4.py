"""Stage 4 of the shipped x2 weights: `pretrained_x2_stage3` trained on from its own result.

Stage 3 gained +0.085 dB on Set5 and was flat over its last 1,000 steps; x3's lower restart
(`pretrained_x3_stage4`, 3e-4) cost less and still gained. x2 gets that schedule (3e-4, 9e-5,
2.7e-5 in thirds) over 3,000 steps, what both cores of a 2-core CPU train in about half an
hour. A fresh optimizer, and seed 2 so the run draws patches the earlier stages did not.
Run it as:

    maffsrn-train --config pretrained_x2_stage4 --workdir runs/stage4/x2 --config.init_from=runs/stage3/x2
"""

from maffsrn_jax.configs import pretrained_x2_stage3

STEPS = 3_000


def get_config():
    c = pretrained_x2_stage3.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 3e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 2
    return c
