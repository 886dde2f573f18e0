"""The light runtime: images in, answers out, on ONNX Runtime (or TensorRT for engines).

Imports numpy, Pillow, onnxruntime and `beit_deploy.core` only (tests/test_layers.py checks it); torch and
TensorRT load in `tensorrt_backend` alone, when an engine is opened.
"""
