"""Stage 2 of the shipped x4 weights: `pretrained_x4` trained on from its own result.

`pretrained_x2_stage2`'s schedule (1e-3, 3e-4, 9e-5 in thirds of the run, a fresh optimizer)
from stage 1's x4 weights, tail included. Run it as:

    maffsrn-train --config pretrained_x4_stage2 --workdir runs/x4s2 --config.init_from=runs/x4/best
"""

from maffsrn_jax.configs import pretrained_x2_stage2

STEPS = 3_000


def get_config():
    c = pretrained_x2_stage2.get_config()
    c.model.scale = 4
    c.init_from = "maffsrn_x4"
    c.num_train_steps = STEPS
    c.lr_decay_steps = STEPS // 3
    return c
