"""Stage 4 of the shipped x3 weights: `pretrained_x3_stage3` trained on from its own result.

Stage 3's restart at 5e-4 first cost 0.1 dB on Set5 and needed 1,750 steps to win it back;
its gains came at 1.5e-4 and below. Stage 4 therefore restarts lower, at 3e-4, decayed x0.3
at thirds (3e-4, 9e-5, 2.7e-5), over 4,000 steps (75 minutes on one core of a 2-core
CPU). A fresh optimizer, and a new seed so the run draws patches stage 3 did not. Run it as:

    maffsrn-train --config pretrained_x3_stage4 --workdir runs/stage4/x3 --config.init_from=runs/stage3/x3
"""

from maffsrn_jax.configs import pretrained_x3_stage3

STEPS = 4_000


def get_config():
    c = pretrained_x3_stage3.get_config()
    c.num_train_steps = STEPS
    c.learning_rate = 3e-4
    c.lr_decay_steps = STEPS // 3
    c.seed = 1
    return c
