"""Result strips against their plate (addon/placement.py, no bpy): in step while each timeline frame shows
the face of the plate frame there; a moved plate is named as a move, a slip or trim as such."""

import pytest

from addon.placement import out_of_step, shown

PLATE = shown(10, range(1, 17), 10, 26)  # frames 1-16 of a shot on timeline frames 10-25


def test_a_strip_shows_its_numbers_from_its_start_within_its_handles():
    assert shown(10, (3, 4, 5, 6), 11, 13) == {11: 4, 12: 5}
    assert shown(10, (3, 4), 8, 14) == {10: 3, 11: 4}  # handles past the content hold nothing of it


def test_layers_added_over_the_plate_are_in_step():
    assert out_of_step(PLATE, dict(PLATE)) == ""


@pytest.mark.parametrize("start, reason", [(-2, "the plate moved 12 frames later"),
                                           (22, "the plate moved 12 frames earlier"),
                                           (9, "the plate moved 1 frame later")])
def test_a_moved_plate_is_named_with_how_far(start, reason):
    layer = shown(start, range(1, 17), start, start + 16)
    assert out_of_step(PLATE, layer) == reason


@pytest.mark.parametrize("layer", [shown(10, range(1, 17), 10, 24),  # the plate extended past the layer
                                   shown(10, range(2, 18), 10, 26),  # slipped: the content moved under the handles
                                   shown(10, range(1, 17), 12, 26)])  # the layer trimmed on its own
def test_a_slipped_or_trimmed_plate_is_out_of_step(layer):
    assert out_of_step(PLATE, layer) == "the plate was slipped or trimmed"
