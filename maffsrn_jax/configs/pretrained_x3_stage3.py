"""Stage 3 of the shipped x3 weights: `pretrained_x3_stage2` trained on from its own result.

Stage 2's curve (docs/weights.md) gained nothing in its 1e-3 third (the warm restart knocked
Set5 down and it only climbed back), gained most at 3e-4, and was still creeping up at 9e-5.
Stage 3 therefore restarts lower, at 5e-4, and decays x0.3 at thirds (5e-4, 1.5e-4, 4.5e-5),
over 4,500 steps: what one core of a 2-core CPU trains in about 95 minutes. A fresh optimizer,
weights from stage 2 (`init_from`). Run it as:

    maffsrn-train --config pretrained_x3_stage3 --workdir runs/stage3/x3 --config.init_from=runs/stage2/x3
"""

from maffsrn_jax.configs import pretrained_x3_stage2

STEPS = 4_500


def get_config():
    c = pretrained_x3_stage2.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 5e-4
    c.lr_decay_steps = STEPS // 3
    return c
