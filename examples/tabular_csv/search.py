"""A tabular study from a CSV file: scikit-learn's breast-cancer table, searched, refit, and
its best row handed to plain skorch.

    python examples/tabular_csv/search.py

Writes data/breast_cancer.csv (569 rows, 30 numeric features and a 0/1 target) in the working
directory, then runs breast-cancer.yaml on it.
"""

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

import hpo
from hpo.engine.models import MLP

HERE = Path(__file__).parent


def write_csv(path: Path) -> None:
    table = load_breast_cancer(as_frame=True).frame
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


if __name__ == "__main__":  # the workers are processes of their own
    write_csv(Path("data/breast_cancer.csv"))
    study = hpo.run(HERE / "breast-cancer.yaml", workers=2)
    print(f"best CV ROC AUC {study.best_value:.3f} with {study.best_params}")
    result = hpo.refit(study.study_name)
    print(f"refit: test ROC AUC {result.metrics['score']:.3f}")

    # The best row of best_params.csv, in plain skorch: the scaling hpo fits inside each fit
    # is a StandardScaler before the net.
    row = pd.read_csv(f"results/{study.study_name}/best_params.csv").iloc[0]
    params = {k: v for k, v in row.items() if k != "preprocess"}
    net = NeuralNetClassifier(
        MLP, module__input_shape=(30,), module__n_outputs=2, **hpo.skorch_params(params)
    )
    table = pd.read_csv("data/breast_cancer.csv")
    X, y = table.drop(columns="target").to_numpy("float32"), table["target"].to_numpy()
    pipeline = make_pipeline(StandardScaler(), net).fit(X, y)
    print(f"plain skorch pipeline: training accuracy {pipeline.score(X, y):.3f}")
