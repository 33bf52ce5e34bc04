"""Moved to ``registry.reconcile`` (issue 11); this name stays for the branches started before the move."""

import sys

from registry import reconcile as _moved

sys.modules[__name__] = _moved
