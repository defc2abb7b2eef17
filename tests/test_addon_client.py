"""The add-on's engine client (addon/engine_client.py, no bpy) against hostile engine output, and the
engine's CPU share beside other engine runs (engine/base/device.py).

The "engines" here are small Python scripts that print what a broken or stranger's engine could print."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _client():
    """addon/engine_client.py on its own: the add-on package would import bpy."""
    spec = importlib.util.spec_from_file_location("facereplace_engine_client", ROOT / "addon" / "engine_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = _client()


def _engine_script(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_engine.py"
    # An alarm ends a fake engine that nobody reads, so a regression fails rather than hangs.
    script.write_text("import json, signal, sys\nsignal.alarm(60)\n" + textwrap.dedent(body))
    return [sys.executable, str(script)]


def _run_to_end(process) -> list[dict]:
    events = []
    while not process.finished:
        event = process.next_event(timeout=0.5)
        if event is not None:
            events.append(event)
    return events + process.drain()


def test_a_line_json_cannot_parse_becomes_output():
    deep = "[" * 200_000 + "]" * 200_000  # json.loads raises RecursionError, not ValueError
    for line in ('{"event": ' + deep + "}", "{" + deep, '{"event": "progress", "done": NaN', "{\x00}"):
        assert client.parse_line(line + "\n") == {"event": "output", "line": line}
    assert client.parse_line('{"event": "done", "frames": 3}\n') == {"event": "done", "frames": 3}


def test_the_reader_drains_the_pipe_to_the_end(tmp_path):
    """An engine that prints an unparsable line and then far more than a pipe holds still runs to its
    end: the reader never stops reading."""
    argv = _engine_script(tmp_path, """
        print('{"event": ' + "[" * 200000, flush=True)  # json.loads raises RecursionError on it
        for i in range(20000):
            print(json.dumps({"event": "progress", "done": i, "total": 20000, "pad": "x" * 40}))
        print(json.dumps({"event": "done", "frames": 20000}), flush=True)
    """)
    process = client.EngineProcess(argv, echo=open(tmp_path / "stderr.txt", "w"))
    events = _run_to_end(process)
    assert process.returncode == 0
    assert events[0]["event"] == "output"
    assert sum(e["event"] == "progress" for e in events) == 20000
    assert events[-1] == {"event": "done", "frames": 20000}


def test_the_bundled_engine_runs_not_one_in_the_current_folder(tmp_path, monkeypatch):
    """Blender's current folder (or $PYTHONPATH) holding an `engine` package does not change which
    engine runs: the add-on's own."""
    for decoy in (tmp_path / "cwd", tmp_path / "pythonpath"):
        (decoy / "engine").mkdir(parents=True)
        (decoy / "engine" / "__init__.py").write_text("")
        (decoy / "engine" / "__main__.py").write_text(
            "import json; print(json.dumps({'event': 'done', 'engine': 'decoy'}))\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    process = client.EngineProcess(client.engine_command(sys.executable, "info", []),
                                   echo=open(tmp_path / "stderr.txt", "w"))
    done = [e for e in _run_to_end(process) if e["event"] == "done"]
    assert process.returncode == 0
    assert done and done[0]["engine"] != "decoy" and "torch" in done[0]


def test_extra_environment_reaches_the_engine(tmp_path):
    argv = _engine_script(tmp_path, """
        import os
        print(json.dumps({"event": "done", "wait": os.environ.get("OMP_WAIT_POLICY"),
                          "path": os.environ.get("PYTHONPATH")}))
    """)
    process = client.EngineProcess(argv, env={"OMP_WAIT_POLICY": "PASSIVE"}, echo=open(tmp_path / "e.txt", "w"))
    [done] = [e for e in _run_to_end(process) if e["event"] == "done"]
    assert done == {"event": "done", "wait": "PASSIVE", "path": str(ROOT)}


def test_engine_runs_share_the_cores(tmp_path):
    """A second engine run takes half the cores while a first one lives, all of them once it has ended
    (a killed run's lock goes with it); FACEREPLACE_THREADS overrides. Without a runtime folder (the
    command line) torch keeps its own count."""
    env = {"FACEREPLACE_RUNTIME_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys; from engine.base import device; device._join_runs(); print('ready', "
         "flush=True); sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**env, "PATH": ""}, cwd=ROOT)

    def threads(**extra) -> int:
        done = subprocess.run([sys.executable, "-c", "from engine.base import device; print(device.cpu_threads(8))"],
                              capture_output=True, text=True, env={**env, **extra}, cwd=ROOT, check=True)
        return int(done.stdout)

    try:
        assert first.stdout.readline() == "ready\n"
        assert threads() == 4
        assert threads(FACEREPLACE_RESERVE_CORES="2") == 3  # (8 - 2) // 2: a core or two left for Blender
        assert threads(FACEREPLACE_THREADS="3") == 3
    finally:
        first.kill()
        first.wait()
    assert threads() == 8
    done = subprocess.run([sys.executable, "-c", "from engine.base import device; print(device.cpu_threads(8))"],
                          capture_output=True, text=True, cwd=ROOT, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.stdout.strip() == "None"


def test_info_reports_what_the_engine_found():
    done = subprocess.run([sys.executable, "-m", "engine", "info", "--events"], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"torch", "cuda", "mps", "hip_version", "gpus", "cpu_threads"} <= set(summary)


def test_the_run_ends_when_the_engine_exits_whatever_its_children_hold(tmp_path):
    """An engine that leaves a child holding its stdout open (a stray worker) and exits: the run ends,
    with every event the engine wrote, instead of waiting for the child."""
    argv = _engine_script(tmp_path, """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits stdout
        print(json.dumps({"event": "done", "child": child.pid}), flush=True)
    """)
    process = client.EngineProcess(argv, echo=open(tmp_path / "stderr.txt", "w"))
    events = []
    for _ in range(120):  # a guard against a hang (60 s), far beyond the client's wait after the exit
        if process.finished:
            break
        events += [e for e in [process.next_event(timeout=0.5)] if e is not None]
    try:
        assert process.finished and process.returncode == 0
        assert [e["event"] for e in events + process.drain()] == ["done"]
    finally:
        os.kill(events[0]["child"], signal.SIGKILL)
