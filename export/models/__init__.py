"""The PyTorch models behind the bundles: CLIP loading, the methods' modules, SAM, prompts (and their data)."""
