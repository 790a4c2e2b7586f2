"""Embedding: the only layer that imports torch models."""

from .backbones import Backbone, BackboneError, Preprocess, load_backbone, resolve_device
from .extract import EmbeddedBatch, embed_arrays, embed_files, resize_for_model
from .store import Embeddings, embed_folder, load_embeddings, save_embeddings

__all__ = ["Backbone", "BackboneError", "Preprocess", "load_backbone", "resolve_device", "EmbeddedBatch",
           "embed_arrays", "embed_files", "resize_for_model", "Embeddings", "embed_folder", "load_embeddings",
           "save_embeddings"]
