// SPDX-License-Identifier: GPL-3.0-or-later
//
// Flamenco job type: convert a FaceReplace shot in chunks of frames, one Blender task per chunk.
//
// Each task opens the .blend headless and runs the add-on's convert operator on its frames, which
// writes that chunk's face layers and mattes into the shot's output folder (chunks write disjoint
// files, and together they are byte for byte one full run). Put this file in the Flamenco Manager's
// scripts/ folder; see docs/farm.md.

const JOB_TYPE = {
    label: "FaceReplace Convert",
    description: "Swap the faces of the FaceReplace target strip, in chunks of frames",
    settings: [
        // Set by the artist (the Blender Flamenco add-on evaluates the defaults in the open .blend).
        {
            key: "frames", type: "string", required: true,
            eval: "C.scene.facereplace.target_frames",
            evalInfo: { showLinkButton: true, description: "Frames of the target strip" },
            description: "Timeline frames to convert, e.g. '1-250' or '1-100,150-250'",
        },
        { key: "chunk_size", type: "int32", default: 25, description: "Frames per task" },
        {
            key: "engine_python", type: "string", default: "",
            description: "The engine's Python on the workers (empty: each worker's add-on preference " +
                "or $FACEREPLACE_ENGINE_PYTHON)",
        },
        {
            key: "addon_module", type: "string", default: "bl_ext.user_default.facereplace", visible: "submission",
            description: "The add-on's module name where the workers installed it",
        },
        // Set by the submission itself.
        { key: "blendfile", type: "string", required: true, visible: "web", description: "The .blend to convert" },
        { key: "scene", type: "string", eval: "C.scene.name", visible: "web", description: "Scene to convert" },
    ],
};

function compileJob(job) {
    const settings = job.settings;
    if (!(settings.chunk_size > 0)) {
        throw "chunk_size must be 1 or more";
    }
    for (const chunk of frameChunker(settings.frames, settings.chunk_size)) {
        job.addTask(convertTask(settings, chunk));
    }
}

// One chunk: Blender headless, the add-on enabled, convert(frames=chunk); a failed convert raises,
// and --python-exit-code turns that into a failed task.
function convertTask(settings, chunk) {
    const task = author.Task(`convert-${chunk}`, "blender");
    const args = settings.scene ? ["--scene", settings.scene] : [];
    task.addCommand(author.Command("blender-render", {
        exe: "{blender}",
        exeArgs: "{blenderArgs}",
        argsBefore: [],
        blendfile: settings.blendfile,
        args: args.concat(["--python-exit-code", "1", "--python-expr", convertScript(settings, chunk)]),
    }));
    return task;
}

function convertScript(settings, chunk) {
    const lines = ["import addon_utils, os, bpy"];
    if (settings.engine_python) {
        lines.push(`os.environ['FACEREPLACE_ENGINE_PYTHON'] = ${pythonString(settings.engine_python)}`);
    }
    lines.push(`addon_utils.enable(${pythonString(settings.addon_module)}, default_set=True)`);
    lines.push(`bpy.ops.facereplace.convert(frames=${pythonString(chunk)})`);
    return lines.join("; ");
}

// A Python string literal: JSON's escaping is valid Python for any text.
function pythonString(text) {
    return JSON.stringify(String(text));
}
