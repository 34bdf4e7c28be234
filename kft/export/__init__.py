"""Model export: TFLite float32 / float16 / int8 with accuracy, size and latency reports."""

from kft.export.tflite import (
    FORMATS,
    evaluate_tflite_classifier,
    export_and_report,
    export_tflite,
)

__all__ = ["FORMATS", "evaluate_tflite_classifier", "export_and_report", "export_tflite"]
