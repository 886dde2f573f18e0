"""Contracts shared by every stage: errors, the manifests on disk, the task table, the checkpoint registry,
atomic folders and progress lines. Nothing here imports a stage above it or anything heavier than the standard
library (numpy and Pillow are not needed either)."""
