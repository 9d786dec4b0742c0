"""The paper's recipe (MAFFSRN x2 on DIV2K 1-800): the base every config here starts from.

Fields are documented where they are set; override any with `--config.<field>=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # MAFFSRN constructor fields (models.MAFFSRN). n_ffgs: 4 = MAFFSRN, 8 = MAFFSRN-L.
    c.model = ml_collections.ConfigDict(
        dict(
            scale=2,
            n_ffgs=4,
            n_mabs=4,
            n_feats=32,
            fusion="mbff",
            use_cea=True,
            channel_shuffle=True,
            esa_convs="3x3+dil3x3",
            dtype="float32",
        )
    )

    # Where the (LR, HR) pairs come from (maffsrn_jax/data/sources.py).
    c.data = data_config()
    c.data.source = "div2k"  # set --config.data.dir to your DIV2K root

    c.batch_size = 16  # global, over all devices and hosts
    c.patch_size = 48  # LR patch side; the HR patch is scale times larger
    c.num_train_steps = 1_000_000  # 1000 EDSR "epochs" of 1000 iterations
    c.learning_rate = 2e-4
    c.lr_decay_steps = 200_000  # halved at 200 K, 400 K, 600 K, 800 K (the paper's schedule)
    c.lr_decay_factor = 0.5
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.weight_decay = 0.0
    c.seed = 0

    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.keep_checkpoints = 3  # latest N; the best by validation PSNR is kept apart in best/
    c.eval_tile = 0  # 0: whole validation images; N: N x N LR tiles (bounded memory)
    c.num_summary_images = 3  # SR | bicubic | HR crops written to TensorBoard at each eval
    c.max_bad_steps = 20  # consecutive non-finite steps before training stops
    c.init_from = ""  # a PyTorch (.pt/.pth/.safetensors) or Orbax checkpoint to start from
    return c


def data_config() -> ml_collections.ConfigDict:
    """The `data` block (`maffsrn_jax.data.get_datasets`), every field documented."""
    c = ml_collections.ConfigDict()
    # One of maffsrn_jax.data.SOURCES: 'embedded' | 'div2k' | 'benchmark' | 'folder' | 'tfds'.
    c.source = "embedded"
    # Root folder of the div2k / benchmark / folder sources.
    c.dir = ""
    # div2k: image numbers for training and validation, 'FIRST-LAST' (inclusive). Numbers are
    # looked up in both DIV2K_train_HR/ and DIV2K_valid_HR/ (the official split: 801-900 are
    # the valid folder); numbers with no file are not an error, an empty selection is.
    c.train_range = "1-800"
    # Validation during training: the first 10 DIV2K validation images, as the official
    # EDSR-framework default (--data_range 1-800/801-810); '801-900' for all of them.
    c.val_range = "801-810"
    # Optional separate validation data (e.g. benchmark/Set5): a benchmark tree, a DIV2K tree
    # (uses val_range) or a folder of HR images; the layout is detected. Overrides the split
    # of the training source.
    c.val_dir = ""
    # folder / benchmark sources without val_dir: the last fraction of images (by file name)
    # is held out for validation (at least one when there are two or more images).
    c.val_fraction = 0.1
    # tfds: dataset name ('{scale}' is filled in), data dir ('' = TFDS's default) and splits.
    c.tfds_name = "div2k/bicubic_x{scale}"
    c.tfds_data_dir = ""
    c.tfds_train_split = "train"
    c.tfds_val_split = "validation"
    # Decoded-image cache; '' = $XDG_CACHE_HOME/maffsrn_jax, else ~/.cache/maffsrn_jax.
    c.cache_dir = ""
    # Background threads computing batches, and how many batches they may run ahead.
    c.num_threads = 2
    c.prefetch = 4
    return c
