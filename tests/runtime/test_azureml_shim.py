"""Lab-era imports keep working: the azureml package re-exports the runtime."""
import subprocess
import sys

import pandas as pd

from mlportal_runtime import get_logger
from mlportal_runtime.schema import generate_schema as runtime_generate_schema

from .conftest import runtime_env


def test_the_lab_imports_resolve_to_the_runtime():
    from azureml.api.realtime.services import generate_schema
    from azureml.api.schema.dataTypes import DataTypes
    from azureml.api.schema.sampleDefinition import SampleDefinition
    from azureml.logging import get_azureml_logger

    assert get_azureml_logger() is get_logger()
    assert generate_schema is runtime_generate_schema

    def run(input_df):
        return input_df

    data = generate_schema(run_func=run, inputs={"input_df": SampleDefinition(DataTypes.PANDAS, pd.DataFrame({"a": [1]}))})
    assert data["inputs"]["input_df"]["kind"] == "pandas"


def test_a_lab_script_logs_a_metric_line(tmp_path):
    script = tmp_path / "lab.py"
    script.write_text("from azureml.logging import get_azureml_logger\nget_azureml_logger().log('Accuracy', 0.5)\n")
    out = subprocess.run([sys.executable, str(script)], env=runtime_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('##mlportal[metric] {"name": "Accuracy", "value": 0.5')
