"""Stage 2 of the shipped x4 weights: `pretrained_x3_stage2` at x4, from stage 1's x4 weights.

    maffsrn-train --config pretrained_x4_stage2 --workdir runs/stage2/x4 --config.init_from=runs/x4
"""

from maffsrn_jax.configs import pretrained_x3_stage2


def get_config():
    c = pretrained_x3_stage2.get_config()
    c.model.scale = 4
    c.init_from = "maffsrn_x4"
    return c
