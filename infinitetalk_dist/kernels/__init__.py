"""Lowest layer: attention dispatch and fused kernels. Imports only torch (+ optional backends)."""

from .attention import ATTENTION_BACKENDS, attention, available_backends, device_backend, resolve_backend

__all__ = ["ATTENTION_BACKENDS", "attention", "available_backends", "device_backend", "resolve_backend"]
