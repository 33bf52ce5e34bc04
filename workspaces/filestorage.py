"""Moved to ``core.filestorage`` (issue 11); this name stays for the branches started before the move."""

import sys

from core import filestorage as _moved

sys.modules[__name__] = _moved
