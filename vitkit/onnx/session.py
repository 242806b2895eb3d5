"""The one onnxruntime session wrapper: a vitkit ONNX graph (bytes or a file) on a device, run on float32 pixels
(a batch-1 graph one image at a time), returning {output name: array}. Used by export verification, the onnx
runtime backend and quantization alike.

Try it:  python -c "from vitkit.onnx.session import Session; import numpy as np; \
print(Session('/tmp/deit.onnx').run(np.zeros((2, 3, 224, 224), np.float32)).keys())"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch



def providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for a device (CUDA first, CPU as the fallback)."""
    if device.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Session:
    def __init__(self, model: str | Path | bytes, device: str | torch.device = "cpu", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        where = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        self.device = torch.device(device)
        self.session = ort.InferenceSession(where, options, providers=providers(self.device))
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = self.session.get_inputs()[0].name  # `pixels`, or a text tower's `input_ids`
        self.dynamic_batch = not isinstance(self.session.get_inputs()[0].shape[0], int)  # a symbolic batch axis

    def run(self, pixels: np.ndarray | torch.Tensor, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """float32 pixels (B, 3, S, S), or int64 token ids (B, L) for a text tower -> {output name: array}
        (default: every output)."""
        x = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
        x = np.ascontiguousarray(x, dtype=np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32)
        names = names or self.outputs
        if self.dynamic_batch or len(x) == 1:
            return dict(zip(names, self.session.run(names, {self.input: x})))
        per = [self.session.run(names, {self.input: x[i:i + 1]}) for i in range(len(x))]  # batch-1 graph
        return dict(zip(names, (np.concatenate(parts) for parts in zip(*per))))

    __call__ = run
