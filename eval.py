"""`python eval.py ...` in a checkout: the `maffsrn-eval` command (maffsrn_jax/eval.py)."""

import sys

from maffsrn_jax.eval import main

if __name__ == "__main__":
    sys.exit(main())
