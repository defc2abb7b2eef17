// SPDX-License-Identifier: GPL-3.0-or-later
//
// Flamenco job type: convert a FaceReplace shot in chunks of frames, one Blender task per chunk.
//
// Each task opens the .blend headless and runs the add-on's convert operator on its frames, which
// writes that chunk's face layers and mattes into the shot's output folder (chunks write disjoint
// files, and together they are byte for byte one full run). Put this file in the Flamenco Manager's
// scripts/ folder as `make farm` builds it (dist/flamenco/, with facereplace_common.js in front); see
// docs/farm.md.

const JOB_TYPE = {
    label: "FaceReplace Convert",
    description: "Swap the faces of the FaceReplace target strip, in chunks of frames",
    settings: [
        // Set by the artist (the Blender Flamenco add-on evaluates the defaults in the open .blend).
        {
            key: "frames", type: "string", required: true,
            eval: `${SCENE}.facereplace.target_frames`,
            evalInfo: { showLinkButton: true, description: "Frames of B's strip" },
            description: "Timeline frames to convert, e.g. '1-250' or '1-100,150-250'",
        },
        { key: "chunk_size", type: "int32", default: 25, description: "Frames per task" },
        ENGINE_PYTHON_SETTING,
        ADDON_MODULE_SETTING,
        // Read from the .blend, checked to be paths every worker sees.
        facesetSetting("faceset", "b"),
        { key: "model", type: "string", eval: `${SCENE}.facereplace.train.model`, visible: "web",
          description: "The trained model" },
        { key: "output", type: "string", eval: `${SCENE}.facereplace.convert.output`, visible: "web",
          description: "Where the face layers and mattes go (the Convert panel's Output)" },
        // Set by the submission itself.
        BLENDFILE_SETTING,
        SCENE_SETTING,
    ],
};

function compileJob(job) {
    const settings = job.settings;
    if (!(settings.chunk_size > 0)) {
        throw "chunk_size must be 1 or more";
    }
    requireAbsolute(settings, { faceset: "Extract B", model: "Train", output: "the Convert panel's Output" });
    // Flamenco's own chunks ("1-25", "26,27", "30-40,45"): the add-on's convert(frames=...) reads them as they are.
    for (const chunk of frameChunker(settings.frames, settings.chunk_size)) {
        job.addTask(blenderTask(`convert-${chunk}`, settings, `bpy.ops.facereplace.convert(frames=${pythonString(chunk)})`));
    }
}

