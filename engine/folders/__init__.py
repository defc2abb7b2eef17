"""The folder and file-format owners: the faceset folder (faceset), convert's output folder (output) and
its multilayer EXR files (exr_layers); each is the sole reader and writer of its layout. A folders module
imports the base layer and faces, never networks or stages. (The model folder's owner is
engine.networks.model, beside the face model it holds.)"""
