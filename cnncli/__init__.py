"""cnncli: image classification with convolutional networks from the command line."""
__version__ = "0.1.0"
