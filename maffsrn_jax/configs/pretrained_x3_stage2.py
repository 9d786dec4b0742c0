"""Stage 2 of the shipped x3 weights: `pretrained_x3` trained on from its own result.

`pretrained_x2_stage2`'s schedule (1e-3, 3e-4, 9e-5 in thirds of the run, a fresh optimizer)
from stage 1's x3 weights, tail included. Run it as:

    maffsrn-train --config pretrained_x3_stage2 --workdir runs/stage2/x3 --config.init_from=runs/x3
"""

from maffsrn_jax.configs import pretrained_x2_stage2

STEPS = 3_000


def get_config():
    c = pretrained_x2_stage2.get_config()
    c.model.scale = 3
    c.init_from = "maffsrn_x3"
    c.num_train_steps = STEPS
    c.lr_decay_steps = STEPS // 3
    return c
