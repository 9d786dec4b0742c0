"""`python train.py ...` in a checkout: the `maffsrn-train` command (maffsrn_jax/train.py)."""

from maffsrn_jax.train import main

if __name__ == "__main__":
    main()
