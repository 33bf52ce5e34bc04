from mlportal_runtime.schema import SampleDefinition

__all__ = ["SampleDefinition"]
