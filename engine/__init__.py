"""FaceReplace engine: extract, train and convert faces, with no Blender in sight.

Stages share files (facesets, model folders, output folders), never objects.
"""

import os

__version__ = "0.1.0"

# What Apple's MPS backend lacks runs on the CPU instead of failing; torch reads this once, as it loads.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
