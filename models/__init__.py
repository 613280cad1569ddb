"""Trained recognizers (ONNX files with model cards) and the torch code that trains and exports them.

Importing this package is cheap and torch-free: the service uses ``MODEL_DIR`` to find the committed
``*.onnx`` files. Training modules (``models.eels`` ...) import torch and need the ``train`` extra.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent
