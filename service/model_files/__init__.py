"""The recognizers shipped with scanlens: ONNX files with model cards, read by the service from here.

``scanlens train ...`` writes here by default; ``scanlens serve --model-dir`` points elsewhere.
"""

from pathlib import Path

#: Folder of the shipped ``*.onnx`` recognizers.
MODEL_DIR = Path(__file__).resolve().parent

__all__ = ["MODEL_DIR"]
