"""``mlflow.exceptions`` of the shim: the one exception MLflow code catches."""


class MlflowException(Exception):
    def __init__(self, message, error_code="INVALID_PARAMETER_VALUE", **kwargs):
        super().__init__(message)
        self.message = str(message)
        self.error_code = error_code
