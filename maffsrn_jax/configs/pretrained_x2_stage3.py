"""Stage 3 of the shipped x2 weights: `pretrained_x2_stage2` trained on from its own result.

Stage 3 of x3 and x4 (`pretrained_x3_stage3`) showed that a restart at 5e-4, decayed x0.3 at
thirds (5e-4, 1.5e-4, 4.5e-5), still gains where a 1e-3 restart only climbs back; x2 gets the
same, over 4,000 steps (74 minutes on one core of a 2-core CPU). A fresh optimizer, and a
new seed so the run draws patches stage 2 did not. Run it as:

    maffsrn-train --config pretrained_x2_stage3 --workdir runs/stage3/x2 --config.init_from=runs/stage2/x2
"""

from maffsrn_jax.configs import pretrained_x2_stage2

STEPS = 4_000


def get_config():
    c = pretrained_x2_stage2.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 5e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 1
    return c
