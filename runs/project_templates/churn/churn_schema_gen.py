"""Write service_schema.json: the inputs score.run() expects, from one sample customer."""

import pandas as pd

from azureml.api.realtime.services import generate_schema
from azureml.api.schema.dataTypes import DataTypes
from azureml.api.schema.sampleDefinition import SampleDefinition
from score import run

SAMPLE = {
    "callfailurerate": 0, "education": "Bachelor or equivalent", "usesinternetservice": "No",
    "gender": "Male", "unpaidbalance": 19, "occupation": "Technology Related Job", "year": 2015,
    "numberofcomplaints": 0, "avgcallduration": 663, "usesvoiceservice": "No",
    "annualincome": 168147, "totalminsusedinlastmonth": 15, "homeowner": "Yes", "age": 12,
    "maritalstatus": "Single", "month": 1, "calldroprate": 0.06, "percentagecalloutsidenetwork": 0.82,
    "penaltytoswitch": 371, "monthlybilledamount": 71, "churn": 0,
    "numdayscontractequipmentplanexpiring": 96, "totalcallduration": 5971, "callingnum": 4251078442,
    "state": "WA", "customerid": 1, "customersuspended": "Yes", "numberofmonthunpaid": 7,
    "noadditionallines": "\\N",
}

if __name__ == "__main__":
    sample = pd.DataFrame([SAMPLE])
    inputs = {"input_df": SampleDefinition(DataTypes.PANDAS, sample)}
    generate_schema(run_func=run, inputs=inputs, filepath="service_schema.json")
    print("Wrote service_schema.json with", sample.shape[1], "input columns")
