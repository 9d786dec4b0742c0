"""Stage 2 of the shipped x2 weights: `pretrained_x2` trained on from its own result.

Stage 1 (`pretrained_x2`, 5,000 steps) halved its lr four times within the run and so spent
four fifths of it below 1e-3; its Set5 curve flattened early. Stage 2 starts from stage 1's
weights (`init_from`; the optimizer starts fresh) and holds 1e-3 for a third of the run, then
x0.3 twice (1e-3, 3e-4, 9e-5), a warm restart that buys the long high-lr phase the paper's
schedule has and a short run cannot. Run it as:

    maffsrn-train --config pretrained_x2_stage2 --workdir runs/stage2/x2 --config.init_from=runs/x2
"""

from maffsrn_jax.configs import pretrained_x2

STEPS = 6_000


def get_config():
    c = pretrained_x2.get_config()
    c.init_from = "maffsrn_x2"
    c.num_train_steps = STEPS
    c.learning_rate = 1e-3
    c.lr_decay_steps = STEPS // 3
    c.lr_decay_factor = 0.3
    return c
