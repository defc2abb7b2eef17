"""The shared base every layer above stands on: events and errors, the torch device, settings dataclasses
(options), frame numbering, media reading and writing, colour spaces and colour matching, detail and
compositing, the training loop's stopping rules and a trained network's checkpoints. A base module imports
only other base modules (and the standard library and third-party packages), never faces, folders, networks
or stages."""
