"""The per-task table: everything that differs between BEiT's four heads, in one place.

Every stage asks this table instead of comparing task names: which transformers class builds the model, what
the graph takes and gives, what `predict` answers (its answer kind: runtime/answers.py, which also says what
parity compares beyond the numbers), and which nodes the fp16 graph keeps in fp32 at the head.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArtifactError
from .manifest import TensorSpec

# Answer kinds of `predict`: runtime/answers.py has one object per kind (post-processing, wire form, the
# decision-level agreement parity reports: top-1/top-5 classes, label-map pixels, or none).
TOP_K, LABEL_MAP, VISUAL_TOKENS, EMBEDDING = "top_k", "label_map", "visual_tokens", "embedding"
# fp16 head rules: keep every node after the last encoder layer in fp32, or only the nodes giving the outputs.
HEAD_AFTER_LAYERS, HEAD_OUTPUT_NODES = "after-layers", "output-nodes"


@dataclass(frozen=True)
class Task:
    """One BEiT head. `outputs` are the graph's output names in order; `answer_from` the one `predict` reads."""

    name: str
    model_class: str  # transformers class, also config.architectures[0]
    outputs: tuple[str, ...]
    answer: str  # TOP_K | LABEL_MAP | VISUAL_TOKENS | EMBEDDING
    answer_from: str
    fp16_head: str  # HEAD_AFTER_LAYERS | HEAD_OUTPUT_NODES
    takes_mask: bool = False  # a bool_masked_pos input (B, num_patches); pre-training checkpoints (shared bias)
    has_labels: bool = False  # class names (config.id2label) travel to the manifest
    head_size_key: str = "num_labels"  # the config key of the head's width
    decoder: bool = False  # UperNet on hidden_states[i - 1] for i in out_indices (fixed input size only)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("classification", "BeitForImageClassification", ("logits",), TOP_K, "logits", HEAD_AFTER_LAYERS,
         has_labels=True),
    Task("segmentation", "BeitForSemanticSegmentation", ("logits",), LABEL_MAP, "logits", HEAD_OUTPUT_NODES,
         has_labels=True, decoder=True),
    Task("masked-image-modeling", "BeitForMaskedImageModeling", ("logits",), VISUAL_TOKENS, "logits",
         HEAD_AFTER_LAYERS, takes_mask=True, head_size_key="vocab_size"),
    Task("features", "BeitModel", ("last_hidden_state", "pooler_output"), EMBEDDING, "pooler_output",
         HEAD_AFTER_LAYERS),
)}
FEATURES = TASKS["features"]


def task(name: str) -> Task:
    """The table entry of a task name (as a manifest stores it); ArtifactError for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ArtifactError(f"unknown task '{name}' (this beit-deploy knows {', '.join(TASKS)}): the manifest "
                            "comes from another tool or version; export the model again") from None


def task_of_architecture(architecture: str | None) -> Task:
    """The task of a config's `architectures[0]`; a plain or unknown BEiT class gives features."""
    return next((t for t in TASKS.values() if t.model_class == architecture), FEATURES)


def input_specs(task_name: str, config, resolution: tuple[int, int]) -> list[TensorSpec]:
    """The graph inputs at `resolution` (H, W): pixel_values (batch, C, H, W) float32, and for masked image
    modeling bool_masked_pos (batch, num_patches) bool. `config`: anything with num_channels and patch_size."""
    specs = [TensorSpec("pixel_values", ("batch", config.num_channels, *resolution), "float32")]
    if task(task_name).takes_mask:
        patches = (resolution[0] // config.patch_size) * (resolution[1] // config.patch_size)
        specs.append(TensorSpec("bool_masked_pos", ("batch", patches), "bool"))
    return specs
