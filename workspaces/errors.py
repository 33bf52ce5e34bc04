"""Moved to ``core.errors`` (issue 11); this name stays for the branches started before the move."""

import sys

from core import errors as _moved

sys.modules[__name__] = _moved
