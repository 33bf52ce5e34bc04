"""Write the Customer Churn Prediction template's training sample (synthetic, deterministic).

    python scripts/generate_churn_data.py [--rows 20000] [--seed 2017] [--out PATH]

The columns are those of the lab's CATelcoCustomerChurnTrainingSample.csv. Churn follows a few
threshold rules (a decision tree can find them) plus label noise, so a tree scores roughly
0.9 and naive Bayes noticeably less. The lab's sample record (customer 1) falls in a region
with no churn rule, so a trained model predicts 0 for it, as in the lab.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

COLUMNS = [
    "age", "annualincome", "calldroprate", "callfailurerate", "callingnum", "customerid",
    "customersuspended", "education", "gender", "homeowner", "maritalstatus",
    "monthlybilledamount", "noadditionallines", "numberofcomplaints", "numberofmonthunpaid",
    "numdayscontractequipmentplanexpiring", "occupation", "penaltytoswitch", "state",
    "totalminsusedinlastmonth", "unpaidbalance", "usesinternetservice", "usesvoiceservice",
    "percentagecalloutsidenetwork", "totalcallduration", "avgcallduration", "churn", "year", "month",
]
STATES = (
    "AK AL AR AZ CA CO CT DE FL GA HI IA ID IL IN KS KY LA MA MD ME MI MN MO MS MT NC ND NE NH "
    "NJ NM NV NY OH OK OR PA RI SC SD TN TX UT VA VT WA WI WV WY"
).split()
EDUCATION = ["Bachelor or equivalent", "High School or below", "Master or equivalent", "PhD or equivalent"]
OCCUPATION = ["Technology Related Job", "Non-technology Related Job", "Others"]
LABEL_NOISE = 0.07
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir,
    "runs", "project_templates", "churn", "data", "CATelcoCustomerChurnTrainingSample.csv",
)


def generate(rows: int, seed: int) -> list[list]:
    """Return ``rows`` customer rows (lists in COLUMNS order); the same seed gives the same rows."""
    rng = np.random.default_rng(seed)

    def pick(options: list[str], p: list[float] | None = None) -> np.ndarray:
        return np.asarray(options, dtype=object)[rng.choice(len(options), size=rows, p=p)]

    age = rng.integers(12, 81, rows)
    income = rng.integers(0, 200_001, rows)
    drop_rate = rng.integers(0, 8, rows) / 100
    failure_rate = rng.integers(0, 4, rows)
    complaints = np.minimum(rng.poisson(0.6, rows), 3)
    unpaid_months = rng.integers(0, 8, rows)
    unpaid_balance = rng.integers(0, 251, rows)
    penalty = rng.integers(0, 500, rows)
    minutes = rng.integers(0, 500, rows)
    billed = rng.integers(0, 121, rows)
    outside = rng.integers(0, 100, rows) / 100
    days_expiring = rng.integers(0, 100, rows)
    calls = rng.integers(1, 10, rows)
    avg_duration = rng.integers(20, 1200, rows)
    internet = pick(["Yes", "No"], [0.55, 0.45])
    suspended = pick(["Yes", "No"], [0.3, 0.7])

    churn = (
        ((complaints >= 2) & (penalty < 250))
        | ((unpaid_balance > 180) & (unpaid_months >= 4))
        | ((outside > 0.7) & (billed > 90))
        | ((income < 30_000) & (internet == "Yes") & (days_expiring < 20))
    )
    flip = rng.random(rows) < LABEL_NOISE
    churn = (churn ^ flip).astype(int)

    columns = {
        "age": age,
        "annualincome": income,
        "calldroprate": drop_rate,
        "callfailurerate": failure_rate,
        "callingnum": rng.integers(4_250_000_000, 4_260_000_000, rows),
        "customerid": np.arange(1, rows + 1),
        "customersuspended": suspended,
        "education": pick(EDUCATION, [0.4, 0.3, 0.2, 0.1]),
        "gender": pick(["Male", "Female"]),
        "homeowner": pick(["Yes", "No"]),
        "maritalstatus": pick(["Single", "Married"]),
        "monthlybilledamount": billed,
        "noadditionallines": np.full(rows, "\\N", dtype=object),  # the source system's NULL
        "numberofcomplaints": complaints,
        "numberofmonthunpaid": unpaid_months,
        "numdayscontractequipmentplanexpiring": days_expiring,
        "occupation": pick(OCCUPATION, [0.3, 0.2, 0.5]),
        "penaltytoswitch": penalty,
        "state": pick(STATES),
        "totalminsusedinlastmonth": minutes,
        "unpaidbalance": unpaid_balance,
        "usesinternetservice": internet,
        "usesvoiceservice": pick(["Yes", "No"]),
        "percentagecalloutsidenetwork": outside,
        "totalcallduration": avg_duration * calls,
        "avgcallduration": avg_duration,
        "churn": churn,
        "year": np.full(rows, 2015),
        "month": rng.integers(1, 4, rows),
    }
    as_text = []
    for name in COLUMNS:
        values = columns[name]
        if values.dtype.kind == "f":
            as_text.append([f"{v:.2f}" for v in values])
        else:
            as_text.append([str(v) for v in values.tolist()])
    return [list(row) for row in zip(*as_text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out = os.path.normpath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(generate(args.rows, args.seed))
    print(f"wrote {args.rows} rows to {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
