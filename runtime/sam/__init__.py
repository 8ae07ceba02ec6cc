"""SAM in the lean runtime: the torch-free predictor over the exported graphs (predictor.py) and the
CLIP-SAM cascade with its result stage (cascade.py)."""
