"""Scoring script of the churn service: ``init()`` once per worker, ``run()`` per request."""

import json
import os
import pickle

model = None


def init():
    """Load model.pkl from the working directory (or from outputs/, where a run writes it)."""
    global model
    path = "model.pkl" if os.path.exists("model.pkl") else os.path.join("outputs", "model.pkl")
    with open(path, "rb") as handle:
        model = pickle.load(handle)


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
    predictions = model.predict(input_df)
    if len(predictions) == 1:
        return json.dumps(str(predictions[0]))
    return json.dumps([str(p) for p in predictions])
