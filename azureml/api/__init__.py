"""Lab-era ``azureml.api`` imports, re-exported from ``mlportal_runtime``."""
