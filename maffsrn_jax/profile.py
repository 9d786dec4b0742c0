"""`python -m maffsrn_jax.profile`, and its names: this module is `maffsrn_jax.tools.profile`."""

import sys

from maffsrn_jax.tools import profile as _impl

if __name__ == "__main__":
    raise SystemExit(_impl.main())
sys.modules[__name__] = _impl
