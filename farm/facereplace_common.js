// SPDX-License-Identifier: GPL-3.0-or-later
//
// What the FaceReplace job types share. Not a job type itself: `make farm` puts it in front of each
// job type's own file, into dist/flamenco/, since the Flamenco Manager loads every job type on its own.

// The scene the sequencer edits: Blender 5.0 gives it its own (context.sequencer_scene), which can
// differ from the window's scene; Blender 4.x has only the window's.
const SCENE = "(getattr(C, 'sequencer_scene', None) or C.scene)";

const ENGINE_PYTHON_SETTING = {
    key: "engine_python", type: "string", default: "{facereplace_python}",
    description: "The engine's Python on the workers: the Manager's two-way variable facereplace_python, " +
        "one value per worker OS (empty: each worker's add-on preference or $FACEREPLACE_ENGINE_PYTHON)",
};
const ADDON_MODULE_SETTING = {
    key: "addon_module", type: "string", default: "bl_ext.user_default.facereplace", visible: "submission",
    description: "The add-on's module name where the workers installed it",
};
const BLENDFILE_SETTING = {
    key: "blendfile", type: "string", required: true, visible: "web", description: "The .blend to work on",
};
// Faceset A or B as the .blend's Extract left it ("a" or "b"), shown on the web form only.
function facesetSetting(key, side) {
    const words = { a: "the face to put in", b: "the shot's face" }[side];
    return {
        key, type: "string", eval: `${SCENE}.facereplace.${side}.faceset`, visible: "web",
        description: `Faceset ${side.toUpperCase()} (${words})`,
    };
}
const SCENE_SETTING = {
    key: "scene", type: "string", eval: `${SCENE}.name`, visible: "web", description: "The sequencer's scene",
};

// The job settings of a panel's properties (ENGINE_SETTINGS[panel], which `make farm` builds from the
// engine's schema, and `extra` of the add-on's own), read from the .blend when the job is submitted.
function panelSettings(panel, extra = []) {
    return ENGINE_SETTINGS[panel].concat(extra).map((setting) => Object.assign({}, setting, {
        eval: `${SCENE}.facereplace.${panel}.${setting.key}`, visible: "submission",
    }));
}

// Python that sets the scene's panel properties to the job's `settings` of them (panelSettings), so the
// task runs as submitted, whatever the .blend was saved with.
function panelAssignments(panel, panelSettings, settings) {
    const lines = [];
    for (const { key, type } of panelSettings) {
        const value = settings[key];
        if (value === undefined || value === null) {
            continue;
        }
        if (type !== "bool" && !Number.isFinite(Number(value))) {
            throw `FaceReplace ${key} ${JSON.stringify(value)} is not a number`;
        }
        const python = type === "bool" ? (value ? "True" : "False") : String(Number(value));
        lines.push(`(getattr(bpy.context, 'sequencer_scene', None) or bpy.context.scene).facereplace.${panel}.${key} = ${python}`);
    }
    return lines;
}

// Each of `paths` ({setting key: what sets it}) must be absolute: a "//" path is relative to the .blend,
// which Flamenco's packer copies elsewhere, and a relative one depends on the worker's folder.
function requireAbsolute(settings, paths) {
    for (const [key, where] of Object.entries(paths)) {
        const path = String(settings[key] || "");
        if (!/^(\/[^/]|[A-Za-z]:[\\/]|\\\\|\{)/.test(path)) {
            throw `FaceReplace ${key} path ${JSON.stringify(path)} is not absolute: the workers cannot find it. ` +
                `Set an absolute Work Folder in the add-on's preferences (shared storage every worker sees), ` +
                `then ${where} again, save, and submit`;
        }
    }
}

// One task: Blender headless on the .blend, the add-on enabled, then `call`; a failed operator raises,
// and --python-exit-code turns that into a failed task.
function blenderTask(name, settings, call) {
    const task = author.Task(name, "blender");
    const args = settings.scene ? ["--scene", settings.scene] : [];
    task.addCommand(author.Command("blender-render", {
        exe: "{blender}",
        exeArgs: "{blenderArgs}",
        argsBefore: [],
        blendfile: settings.blendfile,
        args: args.concat(["--python-exit-code", "1", "--python-expr", taskScript(settings, call)]),
    }));
    return task;
}

function taskScript(settings, call) {
    const lines = ["import addon_utils, os, bpy"];
    if (settings.engine_python) {
        lines.push(`os.environ['FACEREPLACE_ENGINE_PYTHON'] = ${pythonString(settings.engine_python)}`);
    }
    lines.push(`addon_utils.enable(${pythonString(settings.addon_module)}, default_set=True)`);
    lines.push(call);
    return lines.join("; ");
}

// A Python string literal: JSON's escaping is valid Python for any text.
function pythonString(text) {
    return JSON.stringify(String(text));
}
