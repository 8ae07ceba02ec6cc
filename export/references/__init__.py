"""The PyTorch reference detector and SAM predictor: the runtime's pipeline computed in torch, for parity."""
