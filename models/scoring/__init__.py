"""Scores of recognizers against simulated ground truth, and the classical baselines (torch-free).

Used alike by the demo (``scanlens.models.demo``), the training modules and the tests. This is the
package's public face: :mod:`.metrics` (the physics fit's detection score, ROC AUC, expected calibration
error, interval coverage) and :mod:`.stem`
(matching found to true atoms and defects, the classical atom finder, a recognizer scored on simulated
STEM frames as the service runs it, the low-dose comparison).
"""

from .metrics import detection_score, expected_calibration_error, interval_coverage, roc_auc
from .stem import (
    CLASSICAL_FRACTION,
    LOW_DOSE,
    LOWDOSE_SEEDS,
    MATCH_FRACTION,
    TUNING_SEEDS,
    Recognizable,
    Segmenter,
    atom_f1,
    atom_scores,
    classical_atoms,
    classical_for,
    classical_scores,
    defect_accuracy,
    evaluate_frame,
    low_dose_comparison,
    match_points,
    pooled,
    recognize_frame,
    simulated_frame,
    tune_classical,
)

__all__ = [
    "CLASSICAL_FRACTION", "LOW_DOSE", "LOWDOSE_SEEDS", "MATCH_FRACTION", "TUNING_SEEDS", "Recognizable",
    "Segmenter", "atom_f1", "atom_scores", "classical_atoms", "classical_for", "classical_scores",
    "defect_accuracy", "detection_score", "evaluate_frame", "expected_calibration_error", "interval_coverage", "low_dose_comparison", "match_points", "pooled",
    "recognize_frame", "roc_auc", "simulated_frame", "tune_classical",
]
