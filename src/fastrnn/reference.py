"""The name the reference backend had before the backends moved to :mod:`fastrnn.backends`:
``fastrnn.reference`` stays importable, as the very module
:mod:`fastrnn.backends.reference` (not a copy), for code that imports it by this name."""
import sys

from .backends import reference

sys.modules[__name__] = reference
