"""The export stage: a transformers BEiT -> per resolution, baked ONNX graphs (fp32, fp16), validated against
the eager model, with their manifest. Needs the `export` extra (torch, transformers, onnx, onnxscript).

loading (from_pretrained or seeded random weights) -> bake (constant attention bias) -> onnx_graph (trace and
fold) -> fp16 (mixed precision) -> parity (figures and verdicts) -> pipeline (atomic folders, manifest).
`graph_files` is the torch-free part (saving, reading and describing ONNX files) that other stages share.
"""
