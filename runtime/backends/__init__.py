"""Where graphs run: one module or folder per backend (ort.py: onnxruntime CPU/CUDA/TensorRT provider;
trt/: native TensorRT engine build, runner and profiles), and components.py, which opens a
bundle's graphs on the chosen one behind the common GraphComponent protocol. A new backend goes here."""
