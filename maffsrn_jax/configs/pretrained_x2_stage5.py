"""Stage 5 of the shipped x2 weights: `pretrained_x2_stage4` trained on from its own result.

Stage 3's restart at 5e-4 gained +0.085 dB on Set5 over 4,000 steps; stage 4's at 3e-4
gained +0.012 over 3,000 and was flat from step 2,000, so the low restart had run out.
Stage 5 goes back to 5e-4, decayed x0.3 at thirds (5e-4, 1.5e-4, 4.5e-5), over 6,000
steps (about 110 minutes on one core of a 2-core CPU), so each level runs 2,000 steps.
A fresh optimizer, and seed 3 so the run draws patches the earlier stages did not. Run it as:

    maffsrn-train --config pretrained_x2_stage5 --workdir runs/stage5/x2 --config.init_from=runs/stage4/x2
"""

from maffsrn_jax.configs import pretrained_x2_stage4

STEPS = 6_000


def get_config():
    c = pretrained_x2_stage4.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 5e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 3
    return c
