"""Export vitkit models to other runtimes. ONNX: `export_onnx(model, "model.onnx", image_size=384)` writes a
verified file with its preprocessing and labels in the metadata (see onnx.py).

Try it:  python -m pytest tests/test_onnx.py -q
"""

from vitkit.export.onnx import (
    ExportReport,
    OnnxExportError,
    OnnxMetadata,
    default_photos,
    export_bytes,
    export_onnx,
    graph_bytes,
    metadata_from_props,
    network_at_size,
    read_metadata,
)

__all__ = ["ExportReport", "OnnxExportError", "OnnxMetadata", "default_photos", "export_bytes", "export_onnx",
           "graph_bytes", "metadata_from_props", "network_at_size", "read_metadata"]
