from mlportal_runtime.schema import DataTypes

__all__ = ["DataTypes"]
