"""Customer churn: train naive Bayes and a decision tree on the telco sample, save the tree.

Run it from the project folder (``mlportal experiment submit -c docker
CATelcoCustomerChurnModelingWithoutDprep.py``). It logs both accuracies as run metrics and
writes ``outputs/model.pkl``: a scikit-learn Pipeline that takes the raw 29-column customer
DataFrame, so ``score.py`` needs no encoding of its own.
"""

import os
import pickle

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.tree import DecisionTreeClassifier

# The lab-era import still works: it returns MLPortal's run logger.
from azureml.logging import get_azureml_logger

DATA_FILE = os.path.join("data", "CATelcoCustomerChurnTrainingSample.csv")
TARGET = "churn"
CATEGORICAL = [
    "customersuspended", "education", "gender", "homeowner", "maritalstatus", "noadditionallines",
    "occupation", "state", "usesinternetservice", "usesvoiceservice",
]
NUMERIC = [
    "age", "annualincome", "calldroprate", "callfailurerate", "monthlybilledamount",
    "numberofcomplaints", "numberofmonthunpaid", "numdayscontractequipmentplanexpiring",
    "penaltytoswitch", "totalminsusedinlastmonth", "unpaidbalance",
    "percentagecalloutsidenetwork", "totalcallduration", "avgcallduration",
]
# customerid, callingnum, year and month identify a row rather than describe a customer, and
# churn is the answer: the pipeline drops them (remainder="drop") but still accepts them, so a
# caller can send the raw record.


def make_pipeline(classifier) -> Pipeline:
    features = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
            ("numeric", "passthrough", NUMERIC),
        ],
        remainder="drop",
    )
    return Pipeline([("features", features), ("classifier", classifier)])


def main() -> None:
    run_logger = get_azureml_logger()

    data = pd.read_csv(DATA_FILE).drop_duplicates()
    print(f"Loaded {len(data)} customers with {data.shape[1]} columns from {DATA_FILE}")
    train, test = train_test_split(data, test_size=0.3, random_state=42, stratify=data[TARGET])

    naive_bayes = make_pipeline(GaussianNB()).fit(train, train[TARGET])
    nb_accuracy = accuracy_score(test[TARGET], naive_bayes.predict(test))
    print("Naive Bayes Accuracy", nb_accuracy)
    run_logger.log("Naive Bayes Accuracy", nb_accuracy)

    tree = make_pipeline(DecisionTreeClassifier(min_samples_split=20, min_samples_leaf=10, random_state=99))
    tree.fit(train, train[TARGET])
    dt_accuracy = accuracy_score(test[TARGET], tree.predict(test))
    print("DTree Accuracy", dt_accuracy)
    run_logger.log("DTree Accuracy", dt_accuracy)

    # Files under outputs/ are kept with the run; register model.pkl from there.
    os.makedirs("outputs", exist_ok=True)
    with open(os.path.join("outputs", "model.pkl"), "wb") as handle:
        pickle.dump(tree, handle)
    print("Exported the decision tree pipeline to outputs/model.pkl")


if __name__ == "__main__":
    main()
