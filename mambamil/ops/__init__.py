"""Low-level operators: the selective scan used by the Mamba blocks."""

from mambamil.ops.selective_scan import (
    available_backends,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

__all__ = ["available_backends", "selective_scan", "selective_scan_chunked", "selective_scan_reference"]
