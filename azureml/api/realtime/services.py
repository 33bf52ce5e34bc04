from mlportal_runtime.schema import generate_schema

__all__ = ["generate_schema"]
