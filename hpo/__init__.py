"""hpo: hyperparameter optimization for PyTorch models on Optuna, skorch and scikit-learn."""
