"""``from azureml.logging import get_azureml_logger`` — returns MLPortal's run logger."""

from mlportal_runtime.logger import RunLogger, get_logger


def get_azureml_logger() -> RunLogger:
    """Return the run logger; ``.log(name, value)`` records a metric of the current run."""
    return get_logger()


__all__ = ["get_azureml_logger"]
