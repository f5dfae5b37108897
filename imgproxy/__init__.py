"""imgproxy: on-the-fly image transformation over HTTP."""

__version__ = "0.1.0"
