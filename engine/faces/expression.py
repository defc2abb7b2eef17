"""Expression from the 68 landmarks: how open the mouth and the eyes are, and whether faceset A's faces
span what B's face does in the shot.

A model draws A only as A's faces showed it. Where B opens its mouth wider than A ever did, the swap draws
the mouth half shut on B's dropped jaw; where B shuts its eyes and A never did, the swap keeps them open.
Those frames also read less like A (dlib's same-person distance climbs on them). No training setting makes
the swap open wider than A's faces do (balancing expressions keeps A's likeness there, not B's width): A's
faceset needs faces with that expression.
"""

import numpy as np

from ..base.frames import format_ranges

LEFT_EYE_CORNER, RIGHT_EYE_CORNER = 36, 45
MOUTH_GAPS = ((61, 67), (62, 66), (63, 65))  # inner lip pairs, upper to lower
EYE_GAPS = ((37, 41), (38, 40), (43, 47), (44, 46))  # lid pairs, upper to lower

# A's few most extreme faces do not count towards its range: a model does not learn an expression from
# a handful of faces, and one stray landmark would otherwise claim a wide-open mouth.
RARE = 0.02
# How far past A's range (a share of the eye distance) B's opening must go to count as uncovered: a
# little past is drawn well enough.
MARGIN = {"mouth": 0.05, "eyes": 0.015}
# Eyes count as shut below this opening: eyes merely narrower than A's are the other person's eyes, not a
# blink A lacks (open eyes measure 0.045-0.10 on the shared clips, shut ones about 0.02).
SHUT_EYES = 0.035
MIN_FRAMES = 3  # fewer uncovered frames than this are not worth a warning (a blink is 3 to 5)
# Mouth openings this close (a share of the eye distance) count as one expression when training balances
# expressions: about 10 steps from shut to wide open.
EXPRESSION_STEP = 0.05


def openings(landmarks) -> tuple[float, float]:
    """(mouth, eyes): the mean inner-lip gap and lid gap, over the eye-corner distance."""
    landmarks = np.asarray(landmarks, np.float64)
    ocular = float(np.linalg.norm(landmarks[RIGHT_EYE_CORNER] - landmarks[LEFT_EYE_CORNER])) or 1.0

    def gap(pairs):
        return float(np.mean([np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in pairs]) / ocular)

    return gap(MOUTH_GAPS), gap(EYE_GAPS)


def expression_balance_weights(landmarks) -> np.ndarray:
    """Sampling probabilities, one per face, that even out how often each mouth opening (in EXPRESSION_STEP
    steps) is seen: a step's share of the batches grows with the square root of its faces, not with their
    number. A talker's faces are mostly shut or wide open, and a model learns the openings in between only
    if it sees the few faces that show them; fully even shares (DeepFaceLab's uniform yaw) starve the shut
    mouth instead, which the swap then no longer closes, and cost likeness."""
    steps = np.array([int(openings(face)[0] // EXPRESSION_STEP) for face in landmarks])
    _, step_of_face, faces_per_step = np.unique(steps, return_inverse=True, return_counts=True)
    weights = faces_per_step[step_of_face] ** -0.5
    return weights / weights.sum()


def source_range(openings_a) -> dict:
    """A's faces' range of openings, {"mouth": [low, high], "eyes": [low, high]}, past which a B face
    counts as uncovered (RARE, MARGIN and SHUT_EYES applied)."""
    values = np.asarray(openings_a, np.float64).reshape(-1, 2)
    out = {}
    for column, part in enumerate(("mouth", "eyes")):
        low, high = np.percentile(values[:, column], [100 * RARE, 100 * (1 - RARE)])
        out[part] = [round(float(low) - MARGIN[part], 4), round(float(high) + MARGIN[part], 4)]
    out["eyes"][0] = min(out["eyes"][0], SHUT_EYES)
    return out


def uncovered(opening: tuple[float, float], limits: dict) -> list[str]:
    """What of one B face's (mouth, eyes) `opening` A's faces do not span: [] or some of "mouth wider",
    "eyes shut"."""
    out = []
    if opening[0] > limits["mouth"][1]:
        out.append("mouth wider")
    if opening[1] < limits["eyes"][0]:
        out.append("eyes shut")
    return out


def compare_expression_coverage(landmarks_a, landmarks_b, frames_b: list[int]) -> dict:
    """How well A's faces (68 x 2 landmarks each, in any one similarity frame per face) span B's (one per
    frame in `frames_b`) in how open the mouth and eyes are, in numbers and plain words. With no faces of
    A (curate flagged them all) there is no range to compare with, and nothing is said."""
    if not len(landmarks_a):
        return {"source_range": None, "target_faces": len(frames_b), "covered_share": None,
                "mouth_wider_frames": "", "eyes_shut_frames": "", "messages": []}
    limits = source_range([openings(points) for points in landmarks_a])
    found = {"mouth wider": [], "eyes shut": []}
    for number, points in zip(frames_b, landmarks_b, strict=True):
        opening = openings(points)
        for what in uncovered(opening, limits):
            found[what].append(number)
    messages = []
    if len(found["mouth wider"]) >= MIN_FRAMES:
        messages.append(f"B opens its mouth wider than A's faces do in {len(found['mouth wider'])} of "
                        f"{len(frames_b)} frames ({format_ranges(found['mouth wider'])}): the swap draws those "
                        f"mouths half shut; add faces of A with the mouth open")
    if len(found["eyes shut"]) >= MIN_FRAMES:
        messages.append(f"B shuts its eyes further than A's faces do in {len(found['eyes shut'])} of "
                        f"{len(frames_b)} frames ({format_ranges(found['eyes shut'])}): the swap draws those "
                        f"eyes open; add faces of A blinking")
    every = set(found["mouth wider"]) | set(found["eyes shut"])
    return {"source_range": limits, "target_faces": len(frames_b),
            "covered_share": round(1 - len(every) / len(frames_b), 4) if frames_b else 1.0,
            "mouth_wider_frames": format_ranges(found["mouth wider"]),
            "eyes_shut_frames": format_ranges(found["eyes shut"]), "messages": messages}

