"""Image properties: condition measurements (lighting, optics, geometry, pipeline) with OpenCV."""

from .measures import ANGLES, MEASURES, VERSION, measure, register

__all__ = ["ANGLES", "MEASURES", "VERSION", "measure", "register"]
