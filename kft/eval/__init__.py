"""Evaluation: classification metrics and plots (detection metrics live in ``kft.eval.coco``)."""

from kft.eval.classification import classification_metrics, evaluate_classifier
from kft.eval.plots import plot_confusion_matrix, plot_history

__all__ = ["classification_metrics", "evaluate_classifier", "plot_confusion_matrix",
           "plot_history"]
