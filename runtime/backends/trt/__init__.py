"""Native TensorRT: engine build and cache (engine.py), optimisation profiles (profiles.py), and the
runner that binds tensors by name and executes on its own stream (runner.py)."""
