"""Image properties: condition measurements (lighting, optics, geometry, pipeline) with OpenCV."""

from .measures import MEASURES, measure, register

__all__ = ["MEASURES", "measure", "register"]
