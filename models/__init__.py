"""Training, export and scoring of scanlens recognizers (``models/`` in the repository).

Importing this package is cheap and torch-free. The training modules (``scanlens.models.eels`` ...)
import torch and need the ``train`` extra; ``scanlens.models.scoring`` (scores against ground truth,
classical baselines) and ``scanlens.models.demo`` (the live demo application) are torch-free.
The trained files themselves live with the service, in ``scanlens.model_files``.
"""
