"""Stage 4 of the shipped x4 weights: `pretrained_x4_stage3` trained on from its own result.

At x2 and x3, stage 5 (2,000 steps a learning-rate level) gained 2-4x more than the shorter
stage 4. x4 gets stage 5's x2 restart, 5e-4 decayed x0.3 at thirds (5e-4, 1.5e-4, 4.5e-5),
over 9,000 steps, so each level runs 3,000 steps (121 minutes on both cores of a 2-core
CPU). A fresh optimizer, and seed 3 so the run draws patches the
earlier stages did not. Run it as:

    maffsrn-train --config pretrained_x4_stage4 --workdir runs/stage4/x4 --config.init_from=runs/stage3/x4
"""

from maffsrn_jax.configs import pretrained_x4_stage3

STEPS = 9_000


def get_config():
    c = pretrained_x4_stage3.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 5e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 3
    return c
