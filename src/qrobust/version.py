"""qrobust's version, on floor 1 so that any floor can name it (records keep it) without importing the package face."""
__version__ = "0.1.0"
