"""The Flamenco job type (farm/facereplace_convert.js), compiled by Node the way a Flamenco Manager runs it:
with `author` and `frameChunker` provided, `compileJob(job)` must split the frames into chunks of convert
tasks whose Blender commands are valid Python that calls the add-on's convert operator."""

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

JOB_TYPE = Path(__file__).resolve().parents[1] / "farm" / "facereplace_convert.js"

# What the Manager gives a job type: Flamenco's task authoring API and frame chunker, as stand-ins that
# record what the job type asks for.
HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
function frameChunker(frames, size) {
    const list = [];
    for (const part of frames.split(",")) {
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
        chunks.push(runs.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(","));
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


def run_job_type(tmp_path: Path, **settings) -> subprocess.CompletedProcess:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    defaults = {"frames": "1-60", "chunk_size": 25, "engine_python": "", "blendfile": "/farm/shot.blend",
                "addon_module": "bl_ext.user_default.facereplace", "scene": "Scene"}
    return subprocess.run(["node", str(harness), str(JOB_TYPE), json.dumps({**defaults, **settings})],
                          capture_output=True, text=True, timeout=60)


def compile_job(tmp_path: Path, **settings) -> dict:
    done = run_job_type(tmp_path, **settings)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def convert_call(script: str) -> str:
    """The frames argument of the bpy.ops.facereplace.convert call in a task's Python."""
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "bpy.ops.facereplace.convert":
            return ast.literal_eval(node.keywords[0].value)
    raise AssertionError(f"no convert call in {script!r}")


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
    assert [convert_call(s) for s in scripts] == ["1-3,10", "11-12"]
    assignment = next(n for n in ast.walk(ast.parse(scripts[0])) if isinstance(n, ast.Assign))
    assert ast.unparse(assignment.targets[0]) == "os.environ['FACEREPLACE_ENGINE_PYTHON']"
    assert ast.literal_eval(assignment.value) == python


def test_a_bad_chunk_size_is_refused(tmp_path):
    done = run_job_type(tmp_path, chunk_size=0)
    assert done.returncode != 0 and "chunk_size must be 1 or more" in done.stderr
