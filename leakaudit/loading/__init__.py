"""Loading a model file without running code from it.

The policy, per format (every check happens before the deserialiser it guards):

- every zip archive (TorchScript, .pt2, state_dict): each entry's declared size
  is checked against the file's size and the machine's memory (``limits``);
- TorchScript: an archive whose code defines ``__setstate__`` (run while
  loading) is refused; after loading, every method's inlined graph may call
  only allowlisted operators (``ops``), checked before the first forward pass;
- ``.pt2``: only the vetted archive layout, with no pickled, opaque or custom
  payloads, sample inputs that load with ``weights_only=True``, allowlisted
  operators and plain shape expressions (``pt2``);
- state_dict: ``torch.load(weights_only=True)``; safetensors: header checked
  against the file first (``weights``);
- a full pickle: only with ``unsafe_pickle``, which runs the file's code;
- weights alone (``--init``): any of these formats through the same loaders,
  never a full pickle (``state``).
"""

from leakaudit.loading.detect import FORMATS, detect_format
from leakaudit.loading.pt2 import load_export
from leakaudit.loading.state import load_state
from leakaudit.loading.torchscript import load_torchscript
from leakaudit.loading.weights import build_from_state_dict, import_arch, load_safetensors, load_torch_save

__all__ = ["FORMATS", "build_from_state_dict", "detect_format", "import_arch", "load_export", "load_safetensors",
           "load_state", "load_torch_save", "load_torchscript"]
