"""The Flamenco job types (farm/, built into dist/flamenco/ by `make farm`), compiled by Node the way a
Flamenco Manager runs them: with `author` and `frameChunker` provided, `compileJob(job)` must author tasks
whose Blender commands are valid Python that calls the add-on's operators, and refuse what no worker
could run."""

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.build_extension import ROOT, build_farm

# What the Manager gives a job type: Flamenco's task authoring API and frame chunker, as stand-ins that
# record what the job type asks for.
HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
// As Flamenco's jsFrameChunker: "A-B" or Blender's "A..B" in; "regular" chunks out, where a run of two
// frames is written "a,b".
function frameChunker(frames, size) {
    const list = [];
    for (const part of frames.replaceAll("..", "-").split(",")) {
        const [a, b] = part.split("-").map(Number);
        for (let f = a; f <= (isNaN(b) ? a : b); f++) list.push(f);
    }
    const chunks = [];
    for (let i = 0; i < list.length; i += size) {
        const chunk = list.slice(i, i + size);
        const runs = [];
        for (const f of chunk) {
            const last = runs[runs.length - 1];
            if (last && f === last[1] + 1) last[1] = f; else runs.push([f, f]);
        }
        chunks.push(runs.map(([a, b]) => (a === b ? `${a}` : b === a + 1 ? `${a},${b}` : `${a}-${b}`)).join(","));
    }
    return chunks;
}
const author = {
    Task: (name, type) => ({ name, type, commands: [], addCommand(c) { this.commands.push(c); } }),
    Command: (type, parameters) => ({ type, parameters }),
};
const context = vm.createContext({ author, frameChunker, print: () => {} });
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), context);
const tasks = [];
const job = { settings: JSON.parse(process.argv[3]), addTask: (t) => tasks.push(t) };
context.job = job;
vm.runInContext("compileJob(job)", context);
const jobType = vm.runInContext("JOB_TYPE", context);
console.log(JSON.stringify({ tasks, keys: jobType.settings.map((s) => s.key), label: jobType.label }));
"""


DEFAULTS = {"frames": "1-60", "chunk_size": 25, "engine_python": "", "blendfile": "/farm/shot.blend",
            "addon_module": "bl_ext.user_default.facereplace", "scene": "Scene",
            "faceset": "/mnt/projects/fr/Scene/faceset_b-1a2b3c4d", "faceset_a": "/mnt/projects/fr/Scene/faceset_a-5e6f7a8b",
            "faceset_b": "/mnt/projects/fr/Scene/faceset_b-1a2b3c4d", "model": "/mnt/projects/fr/Scene/model",
            "output": "/mnt/projects/fr/Scene/output", "iterations": 20000}


def run_job_type(tmp_path: Path, job_type: str = "convert", root: Path = ROOT, **settings) -> subprocess.CompletedProcess:
    """The job type built from the sources in `root` (the repository's), compiled with `settings`."""
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    [script] = [p for p in build_farm(root, dist=tmp_path) if p.name == f"facereplace_{job_type}.js"]
    return subprocess.run(["node", str(harness), str(script), json.dumps({**DEFAULTS, **settings})],
                          capture_output=True, text=True, timeout=60)


def compile_job(tmp_path: Path, job_type: str = "convert", root: Path = ROOT, **settings) -> dict:
    done = run_job_type(tmp_path, job_type, root, **settings)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def operator_call(script: str, name: str) -> dict:
    """The keyword arguments of the bpy.ops.facereplace.<name> call in a task's Python."""
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == f"bpy.ops.facereplace.{name}":
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    raise AssertionError(f"no {name} call in {script!r}")


def convert_call(script: str) -> str:
    """The frames argument of the bpy.ops.facereplace.convert call in a task's Python."""
    return operator_call(script, "convert")["frames"]


pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the job type")


def test_frames_split_into_chunks_of_convert_tasks(tmp_path):
    compiled = compile_job(tmp_path)
    assert compiled["label"] == "FaceReplace Convert"
    assert {"frames", "chunk_size", "blendfile", "engine_python"} <= set(compiled["keys"])
    tasks = compiled["tasks"]
    assert [t["name"] for t in tasks] == ["convert-1-25", "convert-26-50", "convert-51-60"]
    for task, frames in zip(tasks, ["1-25", "26-50", "51-60"], strict=True):
        [command] = task["commands"]
        assert task["type"] == "blender" and command["type"] == "blender-render"
        parameters = command["parameters"]
        assert parameters["blendfile"] == "/farm/shot.blend" and parameters["exe"] == "{blender}"
        args = parameters["args"]
        assert args[:4] == ["--scene", "Scene", "--python-exit-code", "1"]  # a failed convert fails the task
        assert args[4] == "--python-expr"
        assert convert_call(args[5]) == frames
        assert "addon_utils.enable('bl_ext.user_default.facereplace'" in ast.unparse(ast.parse(args[5]))


def test_gaps_and_odd_paths_stay_valid_python(tmp_path):
    python = '/mnt/farm/venv "engine"/bin/python'
    tasks = compile_job(tmp_path, frames="1-3,10-12", chunk_size=4, engine_python=python)["tasks"]
    scripts = [t["commands"][0]["parameters"]["args"][5] for t in tasks]
    assert [convert_call(s) for s in scripts] == ["1-3,10", "11,12"]  # Flamenco's own chunk format
    assignment = next(n for n in ast.walk(ast.parse(scripts[0])) if isinstance(n, ast.Assign))
    assert ast.unparse(assignment.targets[0]) == "os.environ['FACEREPLACE_ENGINE_PYTHON']"
    assert ast.literal_eval(assignment.value) == python


def test_a_bad_chunk_size_is_refused(tmp_path):
    done = run_job_type(tmp_path, chunk_size=0)
    assert done.returncode != 0 and "chunk_size must be 1 or more" in done.stderr


def test_engine_python_is_a_flamenco_variable_and_the_scene_the_sequencers(tmp_path):
    """The job's engine Python defaults to the Manager's two-way variable {facereplace_python}, which the
    Manager replaces per worker OS; what the job reads from the .blend comes from the sequencer's scene."""
    for job_type in ("convert", "train"):
        settings = {s["key"]: s for s in _job_type_settings(tmp_path, job_type)}
        assert settings["engine_python"]["default"] == "{facereplace_python}"
        evals = [s["eval"] for s in settings.values() if "eval" in s]
        assert evals and all(e.startswith("(getattr(C, 'sequencer_scene', None) or C.scene).") for e in evals)
    tasks = compile_job(tmp_path, engine_python="{facereplace_python}")["tasks"]
    script = tasks[0]["commands"][0]["parameters"]["args"][5]
    assert "os.environ['FACEREPLACE_ENGINE_PYTHON'] = '{facereplace_python}'" in ast.unparse(ast.parse(script))


def _job_type_settings(tmp_path: Path, job_type: str) -> list:
    [script] = [p for p in build_farm(dist=tmp_path) if p.name == f"facereplace_{job_type}.js"]
    code = f"{script.read_text()}\nconsole.log(JSON.stringify(JOB_TYPE.settings));"
    done = subprocess.run(["node", "-e", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("job_type, key", [("convert", "faceset"), ("convert", "model"), ("convert", "output"),
                                           ("train", "model"), ("train", "faceset_a"), ("train", "faceset_b")])
def test_relative_paths_are_refused_at_submission(tmp_path, job_type, key):
    for relative in ("//facereplace/Scene/x", "facereplace/x", ""):
        done = run_job_type(tmp_path, job_type, **{key: relative})
        assert done.returncode != 0
        assert f"FaceReplace {key} path {json.dumps(relative)} is not absolute" in done.stderr
    for absolute in ("/mnt/x", "S:/projects/x", "\\\\server\\share\\x", "{storage}/x"):
        assert run_job_type(tmp_path, job_type, **{key: absolute}).returncode == 0


def test_train_runs_as_one_task_that_resumes_its_model(tmp_path):
    compiled = compile_job(tmp_path, "train", iterations=50000)
    assert compiled["label"] == "FaceReplace Train"
    [task] = compiled["tasks"]
    [command] = task["commands"]
    assert task["type"] == "blender" and command["parameters"]["blendfile"] == "/farm/shot.blend"
    args = command["parameters"]["args"]
    assert args[:4] == ["--scene", "Scene", "--python-exit-code", "1"]
    # train(model=...) resumes what the folder holds (--resume), so a requeued task goes on.
    assert operator_call(args[5], "train") == {"model": "/mnt/projects/fr/Scene/model", "iterations": 50000}


def test_the_train_job_trains_with_the_train_panels_settings(tmp_path):
    """Enhancer Iterations and the engine's panel options (Balance Expressions) are job settings read
    from the .blend, and the task sets them on the scene before it trains, so it trains as submitted."""
    keys = {s["key"]: s for s in _job_type_settings(tmp_path, "train")}
    assert keys["enhancer_iterations"]["eval"].endswith(".facereplace.train.enhancer_iterations")
    assert keys["balance_expressions"]["type"] == "bool"
    [task] = compile_job(tmp_path, "train", enhancer_iterations=500, balance_expressions=True)["tasks"]
    script = ast.unparse(ast.parse(task["commands"][0]["parameters"]["args"][5]))
    scene = "(getattr(bpy.context, 'sequencer_scene', None) or bpy.context.scene).facereplace.train"
    assert f"{scene}.enhancer_iterations = 500" in script and f"{scene}.balance_expressions = True" in script
    assert script.index("enhancer_iterations = 500") < script.index("bpy.ops.facereplace.train(")
    done = run_job_type(tmp_path, "train", enhancer_iterations="many")
    assert done.returncode != 0 and 'FaceReplace enhancer_iterations "many" is not a number' in done.stderr
