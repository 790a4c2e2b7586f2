"""Image properties: condition measurements (lighting, optics, geometry, pipeline) with OpenCV."""

from .measures import MEASURES, VERSION, measure, register

__all__ = ["MEASURES", "VERSION", "measure", "register"]
