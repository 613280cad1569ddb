"""Live training: the trainer process that learns a scan from the operator's labels (docs/live-training.md).

``python -m scanlens.models.live`` is the process (:mod:`.worker`: the pipe, the job loop); :mod:`.spectral`
trains and exports a spectral recognizer from labelled pixels (``train_spectral``), :mod:`.frames` an image
recognizer from a labelled frame (``train_frame``). Importing this package is cheap and torch-free; its
modules import torch and need the ``train`` extra.
"""
