"""Face geometry and analysis: detection, alignment, masks, identity, smoothing."""
