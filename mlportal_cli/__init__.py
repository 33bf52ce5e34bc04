"""The `mlportal` command line: a client of the portal's REST API that mirrors the lab's `az ml`.

Plain Python (requests, jmespath); it never imports Django, so it installs and runs on any machine
that can reach the portal.
"""

__version__ = "0.1.0"
