"""`python -m maffsrn_jax.profile`: the command lives in `maffsrn_jax.tools.profile`.

Importing this module gives that module itself (every name, private ones included, and
monkeypatching reaches the code that runs), so code written against the old path keeps
working.
"""

import sys

from maffsrn_jax.tools import profile as _impl

if __name__ == "__main__":
    raise SystemExit(_impl.main())
sys.modules[__name__] = _impl
