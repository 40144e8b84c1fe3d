"""The layer kinds the fast weight paths cover (one class per kind, one file each), and which kind a layer is."""

from transforms.gradients.wrt.layers.base import LayerKind
from transforms.gradients.wrt.layers.batch_norm import BatchNormKind
from transforms.gradients.wrt.layers.conv import Conv1DKind, ConvKind
from transforms.gradients.wrt.layers.dense import DenseKind
from transforms.gradients.wrt.layers.einsum_dense import EinsumDenseKind
from transforms.gradients.wrt.layers.embedding import EmbeddingKind
from transforms.gradients.wrt.layers.layer_norm import LayerNormKind

LAYER_KINDS = [DenseKind, EinsumDenseKind, EmbeddingKind, ConvKind, Conv1DKind, LayerNormKind, BatchNormKind]


def kind_of(layer) -> type[LayerKind] | None:
    """The kind that covers this layer instance, or None."""
    return next((kind for kind in LAYER_KINDS if kind.covers(layer)), None)


__all__ = ["LAYER_KINDS", "LayerKind", "kind_of"]
