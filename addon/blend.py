"""Live blending of the face layer in the sequencer: a Compositor strip modifier (Blender 5.0+) running the
"FaceReplace Blend" node group, and Bake, which writes what maps onto convert's settings back to them.

The modifier's node group is a small per-strip wrapper, "FaceReplace Blend: <strip>", whose one node is
the shared "FaceReplace Blend" group: the tuned values sit on that node's inputs, so every shot keeps its
own. (Blender 5.0's modifier feeds only the image into its group's inputs; the values live one level in.)
Every input is neutral by default, and neutral leaves the layer as it came.

Where the Compositor modifier type does not exist (Blender 4.2-4.5) the face strip gets a neutral Color
Balance modifier instead.
"""

import math
from dataclasses import dataclass

import bpy

CORE = "FaceReplace Blend"
WRAPPER = "FaceReplace Blend: {}"
MODIFIER = "FaceReplace Blend"
FALLBACK_MODIFIER = "Color Match"
NODE = "Blend"  # the core group's node inside a wrapper
VERSION = 1  # the core group's layout: a group of another version is rebuilt
UNIFORM_STD = math.sqrt(12)  # a uniform 0..1 variable times this has a standard deviation of 1


@dataclass(frozen=True)
class Input:
    name: str
    socket: str
    default: object
    minimum: float
    maximum: float
    description: str


INPUTS = (
    Input("Erode", "NodeSocketInt", 0, -64, 64, "Shrink the face's matte by this many pixels (negative grows it)"),
    Input("Feather", "NodeSocketFloat", 0.0, 0.0, 200.0, "Widen the matte's soft edge by this many pixels"),
    Input("Lift", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Lift (shadows) of the face's colour"),
    Input("Gamma", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Gamma (midtones) of the face's colour"),
    Input("Gain", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Gain (highlights) of the face's colour"),
    Input("Saturation", "NodeSocketFloat", 1.0, 0.0, 2.0, "Saturation of the face's colour"),
    Input("Grain", "NodeSocketFloat", 0.0, 0.0, 1.0,
          "Standard deviation of added grain, in linear units, to match the plate's noise"),
    Input("Grain Size", "NodeSocketFloat", 1.0, 1.0, 16.0, "Size of a grain in pixels"),
    Input("Edge Blur", "NodeSocketFloat", 0.0, 0.0, 64.0, "Blur the face's colour along its soft edge (pixels)"),
)
NEUTRAL = {i.name: i.default for i in INPUTS}


def has_compositor_modifier() -> bool:
    """Blender 5.0 added the Compositor strip modifier."""
    return "COMPOSITOR" in bpy.types.StripModifier.bl_rna.properties["type"].enum_items.keys()


# ---------------------------------------------------------------- the node groups


def _core_group():
    """The shared "FaceReplace Blend" group, built once per .blend (rebuilt if of another version)."""
    group = bpy.data.node_groups.get(CORE)
    if group is not None and group.get("facereplace_version") == VERSION:
        return group
    if group is None:
        group = bpy.data.node_groups.new(CORE, "CompositorNodeTree")
    group.nodes.clear()
    group.interface.clear()
    group["facereplace_version"] = VERSION
    group.interface.new_socket("Image", in_out="INPUT", socket_type="NodeSocketColor")
    for item in INPUTS:
        socket = group.interface.new_socket(item.name, in_out="INPUT", socket_type=item.socket)
        socket.default_value = item.default
        socket.description = item.description
        if item.socket != "NodeSocketColor":
            socket.min_value, socket.max_value = item.minimum, item.maximum
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    _build_core(group)
    return group


def _build_core(group) -> None:
    """Matte: erode/dilate, then a Gaussian feather. Colour: unpremultiplied, lift/gamma/gain, saturation,
    premultiplied by the new matte. Then edge blur where the matte is soft, then grain scaled by the matte.
    Every stage leaves the pixels as they are at its neutral value."""
    nodes, links = group.nodes, group.links
    inp, out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")

    def node(kind, **inputs):
        made = nodes.new(kind)
        for name, value in inputs.items():
            if isinstance(value, bpy.types.NodeSocket):
                links.new(value, made.inputs[name])
            else:
                made.inputs[name].default_value = value
        return made

    def math_node(operation, a, b=None):
        made = nodes.new("ShaderNodeMath")
        made.operation = operation
        for index, value in enumerate((a, b)):
            if isinstance(value, bpy.types.NodeSocket):
                links.new(value, made.inputs[index])
            elif value is not None:
                made.inputs[index].default_value = value
        return made.outputs[0]

    def pair(value):  # a blur size (x, y) from one number
        made = nodes.new("ShaderNodeCombineXYZ")
        links.new(value, made.inputs["X"])
        links.new(value, made.inputs["Y"])
        return made.outputs[0]

    image = inp.outputs["Image"]
    alpha = node("CompositorNodeSeparateColor", Image=image).outputs["Alpha"]
    # the matte: positive Erode shrinks (a negative dilate size); Feather is the soft edge's full width
    shaped = node("CompositorNodeDilateErode", Mask=alpha, Size=math_node("MULTIPLY", inp.outputs["Erode"], -1.0),
                  Type="Distance").outputs["Mask"]
    feathered = node("CompositorNodeBlur", Image=shaped, Size=pair(math_node("MULTIPLY", inp.outputs["Feather"], 0.5)),
                     Type="Gaussian").outputs["Image"]
    matte = node("CompositorNodeSeparateColor", Image=feathered).outputs["Red"]
    # the colour, graded straight and premultiplied again by the new matte
    straight = node("CompositorNodePremulKey", Image=image, Type="To Straight").outputs["Image"]
    balance = nodes.new("CompositorNodeColorBalance")
    balance.inputs["Type"].default_value = "Lift/Gamma/Gain"
    links.new(straight, balance.inputs["Image"])
    for name in ("Lift", "Gamma", "Gain"):
        colour = next(s for s in balance.inputs if s.name == name and s.type == "RGBA")
        links.new(inp.outputs[name], colour)
    graded = node("CompositorNodeHueSat", Image=balance.outputs["Image"], Saturation=inp.outputs["Saturation"])
    with_matte = node("CompositorNodeSetAlpha", Image=graded.outputs["Image"], Alpha=matte, Type="Replace Alpha")
    layer = node("CompositorNodePremulKey", Image=with_matte.outputs["Image"], Type="To Premultiplied").outputs["Image"]
    # edge blur: only where the matte is soft (4a(1-a) peaks at half cover), only when asked for
    blurred = node("CompositorNodeBlur", Image=layer, Size=pair(inp.outputs["Edge Blur"]), Type="Gaussian")
    soft = math_node("MULTIPLY", math_node("MULTIPLY", matte, math_node("SUBTRACT", 1.0, matte)), 4.0)
    edge = math_node("MULTIPLY", soft, math_node("GREATER_THAN", inp.outputs["Edge Blur"], 0.0))
    mix = nodes.new("ShaderNodeMix")
    mix.data_type, mix.blend_type = "RGBA", "MIX"
    links.new(edge, mix.inputs[0])
    links.new(layer, mix.inputs[6])
    links.new(blurred.outputs["Image"], mix.inputs[7])
    # grain: white noise per Grain Size block, new every frame, standard deviation Grain, scaled by the matte
    pixel = node("CompositorNodeImageCoordinates", Image=image).outputs["Pixel"]
    size = nodes.new("ShaderNodeCombineXYZ")
    links.new(inp.outputs["Grain Size"], size.inputs["X"])
    links.new(inp.outputs["Grain Size"], size.inputs["Y"])
    size.inputs["Z"].default_value = 1.0
    cell = nodes.new("ShaderNodeVectorMath")
    cell.operation = "DIVIDE"
    links.new(pixel, cell.inputs[0])
    links.new(size.outputs[0], cell.inputs[1])
    block = nodes.new("ShaderNodeVectorMath")
    block.operation = "FLOOR"
    links.new(cell.outputs["Vector"], block.inputs[0])
    noise = nodes.new("ShaderNodeTexWhiteNoise")
    noise.noise_dimensions = "4D"
    links.new(block.outputs["Vector"], noise.inputs["Vector"])
    links.new(nodes.new("CompositorNodeSceneTime").outputs["Frame"], noise.inputs["W"])
    amount = math_node("MULTIPLY", inp.outputs["Grain"], UNIFORM_STD)
    grain = math_node("MULTIPLY", math_node("MULTIPLY", math_node("SUBTRACT", noise.outputs["Value"], 0.5), amount),
                      matte)
    channels = node("CompositorNodeSeparateColor", Image=mix.outputs[2])
    combined = nodes.new("CompositorNodeCombineColor")
    for name in ("Red", "Green", "Blue"):
        links.new(math_node("ADD", channels.outputs[name], grain), combined.inputs[name])
    links.new(channels.outputs["Alpha"], combined.inputs["Alpha"])
    links.new(combined.outputs["Image"], out.inputs["Image"])


def _wrapper(strip):
    """The strip's own group: its image through one "FaceReplace Blend" node holding this shot's values."""
    name = WRAPPER.format(strip.name)
    group = bpy.data.node_groups.get(name) or bpy.data.node_groups.new(name, "CompositorNodeTree")
    group.nodes.clear()
    group.interface.clear()
    group.interface.new_socket("Image", in_out="INPUT", socket_type="NodeSocketColor")
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    inp, out = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
    blend = group.nodes.new("CompositorNodeGroup")
    blend.node_tree = _core_group()
    blend.name = blend.label = NODE
    group.links.new(inp.outputs["Image"], blend.inputs["Image"])
    group.links.new(blend.outputs["Image"], out.inputs["Image"])
    inp.location, blend.location, out.location = (-300, 0), (0, 0), (300, 0)
    return group


# ---------------------------------------------------------------- the strip's modifier


def _with_sequencer_scene(scene, add):
    """Run `add()`: Blender 5.0 crashes adding a strip modifier while the workspace has no sequencer
    scene (headless), so one is lent for the call."""
    workspace = bpy.context.workspace
    borrow = workspace is not None and getattr(workspace, "sequencer_scene", False) is None
    if borrow:
        workspace.sequencer_scene = scene
    try:
        return add()
    finally:
        if borrow:
            workspace.sequencer_scene = None


def add_blend_modifier(strip, scene, values: dict | None = None):
    """Give the face strip its blend modifier: "FaceReplace Blend" (Compositor) with `values` (else
    neutral), or, before Blender 5.0, a neutral Color Balance. Returns the modifier."""
    if not has_compositor_modifier():
        return _with_sequencer_scene(scene, lambda: strip.modifiers.new(name=FALLBACK_MODIFIER, type="COLOR_BALANCE"))
    group = _wrapper(strip)
    modifier = _with_sequencer_scene(scene, lambda: strip.modifiers.new(name=MODIFIER, type="COMPOSITOR"))
    modifier.node_group = group
    set_values(strip, {**NEUTRAL, **(values or {})})
    return modifier


def blend_node(strip):
    """The "FaceReplace Blend" node of the strip's modifier, or None."""
    modifier = strip.modifiers.get(MODIFIER)
    group = getattr(modifier, "node_group", None)
    return group.nodes.get(NODE) if group is not None else None


def values(strip) -> dict | None:
    """The strip's blend values by input name, or None if it has no blend modifier."""
    node = blend_node(strip)
    if node is None:
        return None
    return {i.name: (tuple(node.inputs[i.name].default_value) if i.socket == "NodeSocketColor"
                     else node.inputs[i.name].default_value) for i in INPUTS}


def set_values(strip, new: dict) -> None:
    node = blend_node(strip)
    for name, value in new.items():
        node.inputs[name].default_value = value


# ---------------------------------------------------------------- Bake


def combined_feather(converted: float, live: float) -> float:
    """A Gaussian feather of width `live` over a convert feather of width `converted`: widths of Gaussian
    edges add as the root of their squares (variances add)."""
    return math.hypot(converted, live)


def bake(strip, convert_settings, converted_feather: float) -> list[str]:
    """Move the strip's erode and feather into the scene's convert settings (added to what the layer was
    converted with) and set them back to neutral on the strip, so the next convert does what the artist
    saw. Colour, grain and edge blur have no convert setting and stay on the strip. Returns what moved."""
    live = values(strip)
    moved = []
    if live["Erode"]:
        convert_settings.erode += int(live["Erode"])
        moved.append(f"erode {convert_settings.erode}")
    if live["Feather"]:
        convert_settings.use_auto_feather = False
        convert_settings.feather = round(combined_feather(converted_feather, live["Feather"]))
        moved.append(f"feather {convert_settings.feather}")
    set_values(strip, {"Erode": NEUTRAL["Erode"], "Feather": NEUTRAL["Feather"]})
    return moved
