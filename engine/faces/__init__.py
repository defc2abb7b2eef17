"""Face geometry and analysis: detection, alignment, masks, identity, head pose, smoothing and expression.
A faces module imports the base layer (engine.base) and other faces modules, nothing above them."""
