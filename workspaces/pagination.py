"""Moved to ``core.pagination`` (issue 11); this name stays for the branches started before the move."""

import sys

from core import pagination as _moved

sys.modules[__name__] = _moved
