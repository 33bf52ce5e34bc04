"""Scoring script of the churn service: ``init()`` once per worker, ``run()`` per request.

The two ``ModelDataCollector`` calls are the Azure ML way of collecting model data: when the
service's data capture is on (``mlportal service update -n S --capture both``) and samples a
request, what they collect is stored with that request's captured row (columns ``inputs.<feature>``
and ``prediction.prediction``); otherwise they do nothing.
"""

import json
import os
import pickle

from azureml.datacollector import ModelDataCollector

model = None
inputs_dc = None
prediction_dc = None


def init():
    """Load model.pkl from the working directory (or from outputs/, where a run writes it)."""
    global model, inputs_dc, prediction_dc
    path = "model.pkl" if os.path.exists("model.pkl") else os.path.join("outputs", "model.pkl")
    with open(path, "rb") as handle:
        model = pickle.load(handle)
    inputs_dc = ModelDataCollector("model.pkl", identifier="inputs")
    prediction_dc = ModelDataCollector("model.pkl", identifier="prediction")


def run(input_df):
    """Return the prediction as JSON: ``"0"`` or ``"1"`` for one record, a list for a batch.

    With service_schema.json the server passes a DataFrame; without one, the raw JSON text of
    the request, which is turned into a DataFrame here.
    """
    if isinstance(input_df, str):
        import pandas as pd

        body = json.loads(input_df)
        records = body.get("input_df", body) if isinstance(body, dict) else body
        input_df = pd.DataFrame(records if isinstance(records, list) else [records])
    if inputs_dc is not None:
        inputs_dc.collect(input_df)
    predictions = model.predict(input_df)
    if prediction_dc is not None:
        prediction_dc.collect(predictions)
    if len(predictions) == 1:
        return json.dumps(str(predictions[0]))
    return json.dumps([str(p) for p in predictions])
