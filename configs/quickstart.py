"""A few minutes on a laptop CPU: MAFFSRN x2 on the photographs shipped with scikit-image.

Trains on most of them and reports PSNR/SSIM on held-out ones beside bicubic's.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model.scale = 2
    c.model.n_ffgs = 2
    c.data.source = "embedded"
    c.batch_size = 16
    c.patch_size = 32
    c.num_train_steps = 1200
    c.learning_rate = 1e-3
    c.lr_decay_steps = 800
    c.log_every_steps = 50
    c.eval_every_steps = 400
    c.checkpoint_every_steps = 400
    return c
