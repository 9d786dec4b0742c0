"""`python -m maffsrn_jax.speed`, and its names: this module is `maffsrn_jax.tools.speed`."""

import sys

from maffsrn_jax.tools import speed as _impl

if __name__ == "__main__":
    raise SystemExit(_impl.main())
sys.modules[__name__] = _impl
