"""128-D identity embeddings from dlib's face recognition model (weights from face-recognition-models).

Two faces of one person are usually nearer than 0.6 (Euclidean) in this space; different people farther.
"""

import functools

import numpy as np

from .detect import dlib_model_path

SAME_PERSON = 0.6


@functools.cache
def _models():
    import dlib

    return dlib, dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))


def embed_faces(image: np.ndarray, landmarks: list[np.ndarray]) -> np.ndarray:
    """Embeddings (n, 128) of the faces at `landmarks` (68 x 2 frame pixels each) in an RGB uint8 image."""
    dlib, model = _models()
    image = np.ascontiguousarray(image)
    out = np.zeros((len(landmarks), 128), np.float32)
    for i, points in enumerate(landmarks):
        points = np.asarray(points)
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in points])
        out[i] = np.asarray(model.compute_face_descriptor(image, shape), np.float32)
    return out


def distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance of each embedding to one reference embedding."""
    return np.linalg.norm(np.asarray(embeddings, np.float32) - np.asarray(reference, np.float32), axis=-1)


# The medoid is taken over at most this many embeddings spread over the input: the pairwise distances
# of a 10,000-frame shot would not fit in memory, and a few hundred faces already fix the centre.
MEDOID_SAMPLE = 256


def medoid(embeddings: np.ndarray) -> np.ndarray:
    """The embedding nearest all others: a centre that one stray face cannot drag."""
    embeddings = np.asarray(embeddings, np.float32)
    spread = np.linspace(0, len(embeddings) - 1, min(len(embeddings), MEDOID_SAMPLE)).round().astype(int)
    embeddings = embeddings[spread]
    pairwise = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    return embeddings[int(np.argmin(pairwise.sum(1)))]
