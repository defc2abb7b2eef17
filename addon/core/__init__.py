"""The add-on's core: what it decides, from plain values, with no bpy (glTF-Blender-IO's io/ to the
Blender modules' blender/). Plain pytest tests it (tests/test_addon_core.py).

    engine_args   the engine's argument lists: extract, train, enhance, convert, mask
    results       convert's manifest, and the plan of the result strips it gives
    done          each verb's `done` event as a typed record, and why a training run stopped
    panel_state   what the panels show, as lines of text and flags
"""
