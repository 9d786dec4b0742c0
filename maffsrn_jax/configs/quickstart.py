"""A few minutes on a laptop CPU: MAFFSRN x2 on the photographs shipped with scikit-image.

Trains on most of them and reports PSNR/SSIM on held-out ones beside bicubic's.
"""

from maffsrn_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.scale = 2
    c.model.n_ffgs = 1  # a quarter of MAFFSRN: the point here is a quick, real result
    c.data.source = "embedded"
    c.batch_size = 16
    c.patch_size = 24
    c.num_train_steps = 500
    c.learning_rate = 1e-3  # a short run; the paper's 2e-4 is for 1 M steps
    c.lr_decay_steps = 400
    c.log_every_steps = 25
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    return c
