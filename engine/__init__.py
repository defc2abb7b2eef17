"""FaceReplace engine: extract, train and convert faces, with no Blender in sight.

Stages share files (facesets, model folders, output folders), never objects. The layers, each importing only
those listed before it (tests/test_package_layers.py checks it):
  base/      the shared base: events, device, options, frames, media, colour, compositing, checkpoints
  faces/     face geometry: detect, align, masks, identity, pose, smooth, expression
  folders/   the folder and file-format owners: faceset, output, exr_layers
  networks/  the networks: model (and the model folder), enhancer, adversarial, losses, augment
  stages/    one module per verb: extract, train, enhance, occlusion, convert, curate, evaluate, weights
and here, the front door and the contract: __main__, verbs, schema, info.
"""

import os

__version__ = "0.1.0"

# What Apple's MPS backend lacks runs on the CPU instead of failing; torch reads this once, as it loads.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
