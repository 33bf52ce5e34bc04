"""Moved to ``core.api_base`` (issue 11); this name stays for the branches started before the move."""

import sys

from core import api_base as _moved

sys.modules[__name__] = _moved
