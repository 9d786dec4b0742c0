"""Stage 3 of the shipped x4 weights: `pretrained_x3_stage3` at x4, from stage 2's x4 weights.

    maffsrn-train --config pretrained_x4_stage3 --workdir runs/stage3/x4 --config.init_from=runs/stage2/x4
"""

from maffsrn_jax.configs import pretrained_x3_stage3


def get_config():
    c = pretrained_x3_stage3.get_config()
    c.model.scale = 4
    c.init_from = "maffsrn_x4"
    return c
