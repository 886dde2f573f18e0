"""Serving on Triton Inference Server: generated model repositories, the server's start and stop, load runs."""
