"""The stages, one per verb of `python -m engine` (engine.verbs maps each verb to its module): extract,
train, enhance, mask (occlusion), convert, curate, evaluate and weights. A stage imports anything below it
(base, faces, folders, networks) but never another stage: stages share files (facesets, model folders,
output folders), never objects."""
