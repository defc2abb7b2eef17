// SPDX-License-Identifier: GPL-3.0-or-later
//
// Flamenco job type: train a FaceReplace model as one task on one (GPU) worker.
//
// The task opens the .blend headless and runs the add-on's train operator into the job's model folder,
// resuming whatever that folder holds (the engine's --resume): a task that is requeued, or a job that
// is run again with more iterations, goes on where the last run saved. Put this file in the Flamenco
// Manager's scripts/ folder as `make farm` builds it; see docs/farm.md.

// The Train panel's settings the job carries: the engine's (from its schema) and the add-on's own.
const TRAIN_PANEL = panelSettings("train", [
    { key: "enhancer_iterations", type: "int32", label: "Enhancer Iterations",
      description: "After the face model, train its enhancer (engine enhance) to this many iterations; 0: none" },
]);

const JOB_TYPE = {
    label: "FaceReplace Train",
    description: "Train the FaceReplace model of the .blend's shots, as one task (give it a GPU worker)",
    settings: [
        {
            key: "model", type: "string", required: true, eval: `${SCENE}.facereplace.train.model`,
            evalInfo: { showLinkButton: true, description: "The Train panel's model" },
            description: "The model folder (absolute, on shared storage); a new folder starts a new model",
        },
        { key: "iterations", type: "int32", eval: `${SCENE}.facereplace.train.iterations`,
          description: "Stop at this iteration, counted over every run of the model" },
        ...TRAIN_PANEL,
        ENGINE_PYTHON_SETTING,
        ADDON_MODULE_SETTING,
        // Read from the .blend, checked to be paths every worker sees.
        facesetSetting("faceset_a", "a"),
        facesetSetting("faceset_b", "b"),
        BLENDFILE_SETTING,
        SCENE_SETTING,
    ],
};

function compileJob(job) {
    const settings = job.settings;
    requireAbsolute(settings, { model: "the Train panel's Model", faceset_a: "Extract A", faceset_b: "Extract B" });
    const options = [`model=${pythonString(settings.model)}`];
    if (settings.iterations > 0) {
        options.push(`iterations=${Number(settings.iterations)}`);
    }
    const call = panelAssignments("train", TRAIN_PANEL, settings)
        .concat([`bpy.ops.facereplace.train(${options.join(", ")})`]);
    job.addTask(blenderTask("train", settings, call.join("; ")));
}
