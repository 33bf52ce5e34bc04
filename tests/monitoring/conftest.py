from tests.cli.conftest import cli, login, portal  # noqa: F401
from tests.deployments.conftest import churn, create_realtime, deploy_worker, storage_root  # noqa: F401
from tests.runtime.conftest import trained_churn  # noqa: F401
