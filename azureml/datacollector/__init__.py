"""``from azureml.datacollector import ModelDataCollector`` — collects into the service's captured data."""

from mlportal_runtime.collector import ModelDataCollector

__all__ = ["ModelDataCollector"]
