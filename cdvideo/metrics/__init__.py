"""Video metrics: temporal consistency, motion and concept fidelity, one function per metric, looked up by name.

Every metric has the shape `metric(video: Video, context: EvalContext) -> MetricResult`. This
package never imports diffusers: it needs numpy, OpenCV for flow and transformers for CLIP/DINO.
Definitions and sources: docs/metrics.md.
"""

from cdvideo.metrics.base import EvalContext, MetricResult, MetricUnavailableError, Video, VideoTooShortError
from cdvideo.metrics.evaluate import Unavailable, VideoScores, aggregate, evaluate_path, evaluate_video
from cdvideo.metrics.inputs import load_reference_images, load_video
from cdvideo.metrics.registry import METRICS, OFFLINE_METRICS, get_metric, parse_metric_names

__all__ = [
    "EvalContext",
    "METRICS",
    "MetricResult",
    "MetricUnavailableError",
    "OFFLINE_METRICS",
    "Unavailable",
    "Video",
    "VideoScores",
    "VideoTooShortError",
    "aggregate",
    "evaluate_path",
    "evaluate_video",
    "get_metric",
    "load_reference_images",
    "load_video",
    "parse_metric_names",
]
