"""Evaluation the product owns (`zsad-edge eval`): MVTec-layout reader (dataset.py), metrics
(metrics.py, scikit-learn from the `eval` extra) and the evaluation loop (evaluate.py)."""
