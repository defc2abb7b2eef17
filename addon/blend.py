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
VERSION = 2  # the core group's layout: a group of another version is rebuilt
# The soft edge's width the layer was converted with (convert's feather, in pixels): set from the manifest
# when the strip is added, not a slider; Feather widens the edge from it.
CONVERTED_EDGE = "Converted Edge"
UNIFORM_STD = math.sqrt(12)  # a uniform 0..1 variable times this has a standard deviation of 1
# Blender's Gaussian Blur of size s has a sigma of about s/3 (measured); convert's edge W pixels wide has a
# sigma of W/4 (engine.stages.convert.shape_mask): a blur this size per pixel of width matches it.
FEATHER_BLUR_SIZE = 0.75
EDGE_BLUR_SIZE = 1.5  # Edge Blur's blur per pixel: a sigma of half of it, visible from its first pixel


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
    Input("Feather", "NodeSocketFloat", 0.0, 0.0, 200.0,
          "Widen the face's soft edge by this many pixels (over the edge it was converted with)"),
    Input("Lift", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Lift (shadows) of the face's colour"),
    Input("Gamma", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Gamma (midtones) of the face's colour"),
    Input("Gain", "NodeSocketColor", (1.0, 1.0, 1.0, 1.0), 0.0, 2.0, "Gain (highlights) of the face's colour"),
    Input("Saturation", "NodeSocketFloat", 1.0, 0.0, 2.0, "Saturation of the face's colour"),
    Input("Grain", "NodeSocketFloat", 0.0, 0.0, 1.0,
          "Standard deviation of added grain, in linear units, to match the plate's noise"),
    Input("Grain Size", "NodeSocketFloat", 1.0, 1.0, 16.0, "Size of a grain in pixels"),
    Input("Edge Blur", "NodeSocketFloat", 0.0, 0.0, 64.0,
          "Blur the face's colour over this many pixels inside its edge, most at the edge, so its detail melts "
          "into the plate"),
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
    for item in (*INPUTS, Input(CONVERTED_EDGE, "NodeSocketFloat", 0.0, 0.0, 1000.0, "Convert's feather")):
        socket = group.interface.new_socket(item.name, in_out="INPUT", socket_type=item.socket)
        socket.default_value = item.default
        socket.description = item.description
        if item.socket != "NodeSocketColor":
            socket.min_value, socket.max_value = item.minimum, item.maximum
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    _build_core(group)
    return group


def _build_core(group) -> None:
    """Matte: erode/dilate, then a Gaussian feather that makes the soft edge Feather pixels wider than the
    converted one. Colour: unpremultiplied, lift/gamma/gain, saturation, edge blur inside the edge, then
    premultiplied by the new matte; then grain scaled by the matte. Every stage leaves the pixels as they
    are at its neutral value."""
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
    # the matte: positive Erode shrinks (a negative dilate size). Gaussian edges' widths add in quadrature,
    # so an edge `converted` wide becomes converted + Feather wide under a blur sqrt(F (F + 2 converted))
    # wide: each pixel of Feather is a pixel of edge, however soft the layer came
    shaped = node("CompositorNodeDilateErode", Mask=alpha, Size=math_node("MULTIPLY", inp.outputs["Erode"], -1.0),
                  Type="Distance").outputs["Mask"]
    feather = inp.outputs["Feather"]
    widening = math_node("SQRT", math_node("MULTIPLY", feather, math_node(
        "ADD", feather, math_node("MULTIPLY", inp.outputs[CONVERTED_EDGE], 2.0))))
    feathered = node("CompositorNodeBlur", Image=shaped, Size=pair(math_node("MULTIPLY", widening, FEATHER_BLUR_SIZE)),
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
    # edge blur: the graded colour averaged over Edge Blur pixels, weighted by the layer's own cover (a blur
    # of the premultiplied layer, unpremultiplied: no black from outside the face), in full at the edge and
    # fading to none Edge Blur pixels inside it (where the blurred cover reaches 1)
    covered = node("CompositorNodeSetAlpha", Image=graded.outputs["Image"], Alpha=alpha, Type="Replace Alpha")
    premultiplied = node("CompositorNodePremulKey", Image=covered.outputs["Image"], Type="To Premultiplied")
    blurred = node("CompositorNodeBlur", Image=premultiplied.outputs["Image"], Type="Gaussian",
                   Size=pair(math_node("MULTIPLY", inp.outputs["Edge Blur"], EDGE_BLUR_SIZE))).outputs["Image"]
    averaged = node("CompositorNodePremulKey", Image=blurred, Type="To Straight").outputs["Image"]
    reach = node("CompositorNodeSeparateColor", Image=blurred).outputs["Alpha"]
    inside = math_node("MULTIPLY", math_node("SUBTRACT", 1.0, reach), 2.0)
    edge = math_node("MULTIPLY", math_node("MINIMUM", inside, 1.0), math_node("GREATER_THAN", inp.outputs["Edge Blur"], 0.0))
    mix = nodes.new("ShaderNodeMix")
    mix.data_type, mix.blend_type = "RGBA", "MIX"
    links.new(edge, mix.inputs[0])
    links.new(graded.outputs["Image"], mix.inputs[6])
    links.new(averaged, mix.inputs[7])
    with_matte = node("CompositorNodeSetAlpha", Image=mix.outputs[2], Alpha=matte, Type="Replace Alpha")
    layer = node("CompositorNodePremulKey", Image=with_matte.outputs["Image"], Type="To Premultiplied").outputs["Image"]
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
    channels = node("CompositorNodeSeparateColor", Image=layer)
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


def add_blend_modifier(strip, scene, values: dict | None = None, converted_edge: float = 0.0):
    """Give the face strip its blend modifier: "FaceReplace Blend" (Compositor) with `values` (else
    neutral) over a layer converted with a soft edge `converted_edge` pixels wide, or, before Blender 5.0, a
    neutral Color Balance. Returns the modifier."""
    if not has_compositor_modifier():
        return _with_sequencer_scene(scene, lambda: strip.modifiers.new(name=FALLBACK_MODIFIER, type="COLOR_BALANCE"))
    group = _wrapper(strip)
    modifier = _with_sequencer_scene(scene, lambda: strip.modifiers.new(name=MODIFIER, type="COMPOSITOR"))
    modifier.node_group = group
    set_values(strip, {**NEUTRAL, **(values or {}), CONVERTED_EDGE: float(converted_edge)})
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
        convert_settings.feather = round(converted_feather + live["Feather"])  # Feather widens the edge by its pixels
        moved.append(f"feather {convert_settings.feather}")
    set_values(strip, {"Erode": NEUTRAL["Erode"], "Feather": NEUTRAL["Feather"]})
    return moved
