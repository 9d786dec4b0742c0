"""`python -m maffsrn_jax.bench`, and its names: this module is `maffsrn_jax.tools.bench`."""

import sys

from maffsrn_jax.tools import bench as _impl

if __name__ == "__main__":
    raise SystemExit(_impl.main())
sys.modules[__name__] = _impl
