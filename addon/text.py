"""Messages laid out for a panel: one label a line, wrapped to the panel's width. No bpy here, so plain
pytest checks the wrapping."""

import textwrap

CHAR_PX = 7.0  # the average width of a character of Blender's UI font at a UI scale of 1
MARGIN_PX = 50.0  # the panel's margins and a label's icon
MIN_CHARS = 20
HEADLESS_CHARS = 60  # no region to measure (a script drawing the panel): about a default sidebar's width


def chars_per_line(region_width: float | None, ui_scale: float = 1.0) -> int:
    """How many characters fit on a label of a region `region_width` pixels wide."""
    if not region_width:
        return HEADLESS_CHARS
    return max(MIN_CHARS, int((region_width - MARGIN_PX * ui_scale) / (CHAR_PX * ui_scale)))


def wrap(message: str, width: int) -> list[str]:
    """`message` as lines of at most `width` characters: each of its own lines (one result or warning each)
    wrapped at spaces, a word longer than a line (a path) cut."""
    return [part for line in message.splitlines() for part in textwrap.wrap(line, width, break_on_hyphens=False) or [""]]


def draw_wrapped(layout, message: str, context, icon: str = "NONE") -> None:
    """Draw `message` as labels wrapped to the width of the context's region, `icon` before the first."""
    region = getattr(context, "region", None)
    width = chars_per_line(getattr(region, "width", None), context.preferences.system.ui_scale)
    column = layout.column(align=True)
    for i, line in enumerate(wrap(message, width)):
        column.label(text=line, icon=icon if i == 0 else ("BLANK1" if icon != "NONE" else "NONE"))
