"""What runs inside run and service containers: the run logger, service schemas, the scoring server.

Plain Python with no Django; pandas and numpy are imported only when a schema needs them.
"""

from mlportal_runtime.collector import ModelDataCollector, collect
from mlportal_runtime.logger import METRIC_PREFIX, METRICS_PREFIX, PARAM_PREFIX, TAG_PREFIX, get_logger, parse_line, parse_metric_line

__all__ = ["ModelDataCollector", "collect", "METRIC_PREFIX", "METRICS_PREFIX", "PARAM_PREFIX", "TAG_PREFIX", "get_logger", "parse_line", "parse_metric_line"]
