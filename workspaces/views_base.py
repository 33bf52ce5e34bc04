"""Moved to ``core.views_base`` (issue 11); this name stays for the branches started before the move."""

import sys

from core import views_base as _moved

sys.modules[__name__] = _moved
