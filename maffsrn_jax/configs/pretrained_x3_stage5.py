"""Stage 5 of the shipped x3 weights: `pretrained_x3_stage4` trained on from its own result.

Stage 4 (3e-4, x0.3 at thirds, 4,000 steps) gained +0.022 dB on Set5 and +0.025 on
Urban100 and was flat from step 2,500. Stage 5 keeps its schedule (3e-4, 9e-5, 2.7e-5)
but gives each level 2,000 steps, 6,000 in all (about 110 minutes on one core of a 2-core
CPU). A fresh optimizer, and seed 2 so the run draws patches the earlier stages did not.
Run it as:

    maffsrn-train --config pretrained_x3_stage5 --workdir runs/stage5/x3 --config.init_from=runs/stage4/x3
"""

from maffsrn_jax.configs import pretrained_x3_stage4

STEPS = 6_000


def get_config():
    c = pretrained_x3_stage4.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 3e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 2
    return c
