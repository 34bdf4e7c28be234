"""Necks: layers between a backbone's feature levels and the detection heads."""

from kft.models.necks.fpn import FPN

__all__ = ["FPN"]
