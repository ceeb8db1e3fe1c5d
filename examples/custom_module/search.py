"""Search the residual MLP of ``mynets`` on the digits, then refit the best one.

    python examples/custom_module/search.py      # then: python examples/custom_module/predict.py

The study goes to $HPO_STORAGE (default sqlite:///hpo.db) and the refit to the artifact
folder $HPO_ARTIFACTS (default results/), both in the working directory.
"""

from pathlib import Path

import hpo

HERE = Path(__file__).parent

if __name__ == "__main__":  # the workers are processes of their own
    study = hpo.run(HERE / "custom-module.yaml", workers=2, allow_modules=["mynets"])
    print(f"best CV accuracy {study.best_value:.3f} with {study.best_params}")
    refit = hpo.refit(study.study_name, allow_modules=["mynets"])
    print(f"refit: test accuracy {refit.metrics['accuracy']:.3f}")
