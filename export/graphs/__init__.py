"""From modules to a bundle: ONNX export with its parity gate, the export-only attention, SAM graphs,
atomic bundle writing, TensorRT engine jobs."""
