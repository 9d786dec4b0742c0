"""Stage 1 of the shipped MAFFSRN x3 weights (`maffsrn_x3`): x2's recipe, from the x2 weights.

As EDSR trains its larger scales: every weight of the trained x2 model but the tail (whose
shapes depend on the scale, re-initialised) is the starting point (`init_from`), so the
body's features carry over and the run can be much shorter. Data and schedule as
`pretrained_x2` (halvings at 20/40/60/80 % of the run). T91 images smaller than the 144x144
HR patch (most of T91) are skipped with a warning; BSDS500 is large enough.
"""

from maffsrn_jax.configs import pretrained_x2

STEPS = 2_500


def get_config():
    c = pretrained_x2.get_config()
    c.model.scale = 3
    c.init_from = "maffsrn_x2"
    c.num_train_steps = STEPS
    c.lr_decay_steps = STEPS // 5
    return c
