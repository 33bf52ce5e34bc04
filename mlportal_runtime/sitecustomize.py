"""Copied by MLPortal to the root of the runtime folder on PYTHONPATH in run images and local runs.

Appends the `mlflow` shim (mlportal_runtime/mlflow_shim) to the END of sys.path, after
site-packages: a script's `import mlflow` then logs into its portal run, unless the run's
environment holds a real MLflow, which comes first and wins.
"""
import os
import sys

_shim = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlportal_runtime", "mlflow_shim")
if os.path.isdir(_shim) and _shim not in sys.path:
    sys.path.append(_shim)
