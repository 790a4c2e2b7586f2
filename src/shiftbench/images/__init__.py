"""Image input: discovery, labels and decoding that never falls over."""

from .decode import DEFAULT_MAX_PIXELS, ImageError, decode_image, read_image
from .discover import IMAGE_SUFFIXES, InputError, find_images, labels_from_csv, labels_from_folders

__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "decode_image", "read_image", "IMAGE_SUFFIXES",
           "InputError", "find_images", "labels_from_csv", "labels_from_folders"]
