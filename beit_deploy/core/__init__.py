"""Contracts shared by every stage: errors, the manifests on disk, the tables (tasks, precisions, backends), the
checkpoint registry, machine facts, atomic folders and progress lines. Nothing here imports a stage above it, and
nothing outside the standard library at module level; a few functions import an optional package when called
(engine_manifest asks torch for the GPU, machine asks torch for its threads), each only where it is used.
"""
