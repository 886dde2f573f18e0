"""The TensorRT stage: engines from an export's ONNX graphs (`build`), what an engine or graph holds
(`inspect`), and the GPU machine check (`gpu_check`). TensorRT itself is imported lazily, where used."""
