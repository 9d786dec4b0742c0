"""Stage 1 of the shipped MAFFSRN x4 weights (`maffsrn_x4`): `pretrained_x3`'s recipe at x4.

Started from the x2 weights with the tail re-initialised, the same schedule. T91 images smaller
than the 192x192 HR patch are skipped with a warning; BSDS500 is large enough.
"""

from maffsrn_jax.configs import pretrained_x3


def get_config():
    c = pretrained_x3.get_config()
    c.model.scale = 4
    return c
