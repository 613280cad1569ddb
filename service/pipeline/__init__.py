"""Recognition pipeline: axis mapping, recognizers, scan lifecycle and accounting, batching, inference.

The public face of the layer; the modules below it are private to it (``docs/architecture.md``).
"""

from .atoms import PostProcess, postprocess
from .axis import AxisError, AxisMap, length_factor
from .batcher import InferenceWorker, PixelQueue
from .frames import DEFAULT_TILE_PX, FrameBinding, FrameRecognizer, recognize_image, rescale, tile_bounds, zoom_factor
from .live import LabelError, TrainingSet, training_set
from .loading import Recognizer, load_recognizers, open_recognizer, provider_warnings, recognizer_for
from .onnx_model import ModelError, OnnxModel, read_card, session_options
from .pca import PCAAnalyzer, StreamingPCA
from .processor import Binding, Processor, Publication, WorkItem, takes_of
from .retention import FrameRetention, Line, SpectraRetention, retention_for
from .providers import (DEFAULT_PARALLEL, DEFAULT_THREADS, PROVIDERS, ProviderError, per_provider,
                        normalize as normalize_providers, normalize_table as provider_table,
                        resolve as resolve_providers)
from .scan import ScanState
from .scans import ScanLimits, ScanManager, WorkerOptions
from .seqs import SeqRanges
from .spectral import SpectralBinding, SpectralProcessor, SpectralRecognizer
from .tracking import DefectTracker

__all__ = [
    "DEFAULT_PARALLEL", "DEFAULT_THREADS", "DEFAULT_TILE_PX", "PROVIDERS",
    "AxisError", "AxisMap", "Binding", "DefectTracker", "FrameBinding", "FrameRecognizer", "FrameRetention",
    "InferenceWorker", "LabelError", "Line", "SpectraRetention", "TrainingSet", "retention_for", "training_set",
    "ModelError", "OnnxModel", "PCAAnalyzer", "PixelQueue", "PostProcess", "Processor", "ProviderError", "Publication",
    "Recognizer", "ScanLimits", "ScanManager", "ScanState", "SeqRanges", "SpectralBinding", "SpectralProcessor",
    "SpectralRecognizer", "StreamingPCA", "WorkItem", "WorkerOptions", "length_factor", "load_recognizers",
    "normalize_providers", "open_recognizer", "per_provider", "postprocess", "provider_table", "provider_warnings",
    "read_card", "recognize_image", "recognizer_for", "rescale", "resolve_providers", "session_options", "takes_of",
    "tile_bounds", "zoom_factor",
]
