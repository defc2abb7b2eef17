"""The torch networks and what trains them: the face model (model, which also owns the model folder), the
enhancer, the adversarial critic, the losses and the augmented training batches. A networks module imports
base, faces and folders, never a stage."""
