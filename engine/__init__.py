"""FaceReplace engine: extract, train and convert faces, with no Blender in sight.

Stages share files (facesets, model folders, output folders), never objects.
"""

__version__ = "0.1.0"
