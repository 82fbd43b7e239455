"""ocrwatch: watched folders in, Aspose.OCR Cloud task GUIDs out."""

from __future__ import annotations

__version__ = "0.1.0"
