"""Everything ONNX, in one package: format.py (names, the metadata that carries config, preprocessing and labels),
graph.py (a vitkit network at a fixed size -> graph bytes; the one exporter call), session.py (the one
onnxruntime wrapper), verify.py (onnxruntime against PyTorch), export.py (`export_onnx`: build, verify, write).
The onnx runtime backend (vitkit.runtime.onnx_backend) and quantization (vitkit.quantize) build on it.

Try it:  python -m pytest tests/test_onnx.py -q
"""

from vitkit.onnx.export import ExportReport, export_bytes, export_onnx
from vitkit.onnx.format import OnnxExportError, OnnxMetadata, metadata_from_props, read_metadata
from vitkit.onnx.graph import graph_bytes, network_at_size
from vitkit.onnx.verify import default_photos

__all__ = ["ExportReport", "OnnxExportError", "OnnxMetadata", "default_photos", "export_bytes", "export_onnx",
           "graph_bytes", "metadata_from_props", "network_at_size", "read_metadata"]
