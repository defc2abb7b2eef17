"""Random-weight stand-ins for the fan backend's published weight files, to test and time its code path
without them (its speed does not depend on the weights' values).

The files hold face-alignment's own S3FD and 2DFAN4 networks, saved as the published files are (torch's
legacy serialization of a plain state dict) under the published names. Their hashes differ from the
published ones, so the engine refuses them unless its FAN_WEIGHTS table is swapped, in-process, for the
one `write_random_fan_weights` returns; nothing outside the process can turn the check off.

The detector is wired to find exactly one face-sized box in any frame, near its top-left corner, so the
landmark network and everything after it run on every frame: its last scale's feature map is set to a
constant, and that scale's face score is weighted by which of its 3x3 taps fall inside the zero padding,
which peaks at the map's top-left cell alone. Every other scale scores no face.
"""

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import torch

from engine.faces import detect

BOX_CENTER = (160.0, 120.0)  # the one box's centre and side, in frame pixels
BOX_SIDE = 128.0


def random_networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    """face-alignment's detector and landmark networks with random weights, by FAN_WEIGHTS role."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    torch.manual_seed(seed)
    detector, landmarks = s3fd(), FAN(4)
    with torch.no_grad():
        heads = [(detector.conv3_3_norm_mbox_conf, detector.conv3_3_norm_mbox_loc),
                 (detector.conv4_3_norm_mbox_conf, detector.conv4_3_norm_mbox_loc),
                 (detector.conv5_3_norm_mbox_conf, detector.conv5_3_norm_mbox_loc),
                 (detector.fc7_mbox_conf, detector.fc7_mbox_loc),
                 (detector.conv6_2_mbox_conf, detector.conv6_2_mbox_loc),
                 (detector.conv7_2_mbox_conf, detector.conv7_2_mbox_loc)]
        for conf, loc in heads:
            conf.weight.zero_()
            conf.bias.zero_()
            conf.bias[-1] = -30.0  # the face logit (the last channel); the others are background
            loc.weight.zero_()
            loc.bias.zero_()
        # The last scale (stride 128, prior box 512) sees a map of ones; its taps in the kernel's top row
        # and left column count against a face, the other four for it: 4 at the top-left cell (whose top
        # row and left column are padding), at most 2 anywhere else.
        detector.conv7_2.weight.zero_()
        detector.conv7_2.bias.fill_(1.0)
        conf, loc = heads[-1]
        tap = 10.0 / conf.in_channels
        conf.weight[1] = tap
        conf.weight[1, :, 0, :] = -tap
        conf.weight[1, :, :, 0] = -tap
        conf.bias[1] = -30.0  # face logit: +10 at the top-left cell, -10 or less elsewhere
        # Move the prior (centre 64, 64, side 512) to the box: centre offsets in units of 0.1 prior, log
        # side in units of 0.2 (S3FD's variances).
        prior_center, prior_side = 64.0, 512.0
        loc.bias[0] = (BOX_CENTER[0] - prior_center) / (0.1 * prior_side)
        loc.bias[1] = (BOX_CENTER[1] - prior_center) / (0.1 * prior_side)
        loc.bias[2] = loc.bias[3] = math.log(BOX_SIDE / prior_side) / 0.2
    return {"detector": detector, "landmarks": landmarks}


def write_random_fan_weights(folder: str | Path, seed: int = 0) -> dict[str, detect.WeightFile]:
    """Write both files into `folder` under their published names; return a FAN_WEIGHTS table that trusts
    them, to put in place of engine.faces.detect.FAN_WEIGHTS in this process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for role, net in random_networks(seed).items():
        spec = detect.FAN_WEIGHTS[role]
        path = folder / spec.name
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
        table[role] = replace(spec, sha256_prefix=hashlib.sha256(path.read_bytes()).hexdigest()[:10])
    return table
