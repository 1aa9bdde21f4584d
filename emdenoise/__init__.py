"""emdenoise: deep-learning denoising of electron-microscopy images, packaged as an MLCube.

One module per MLCube task lives in :mod:`emdenoise.tasks`; the command line is :mod:`emdenoise.cli`.
"""

__version__ = "0.1.0"
