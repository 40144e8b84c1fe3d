"""The command line answers at once: no TensorFlow for --help or option errors, no C++ start-up lines, clear hints."""

import os
import pty
import select
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.options import OptionsError, parse
from pipeline.run import main
from tests.conftest import save, write_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs main() with the given arguments, then prints which heavy modules the process imported.
PROBE = (
    "import sys; from pipeline.run import main; rc = main(sys.argv[1:]); "
    "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'})); sys.exit(rc)"
)
NATIVE_LINES = ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "port.cc")


def cli(*args, stderr=subprocess.PIPE, **kw):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=stderr is subprocess.PIPE, text=True,
        env=env, cwd=kw.get("cwd", ROOT), timeout=300,
    )


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--help"], 0, "usage: beam-gradients"),
        (["--input", "x", "--ouput", "y"], 2, "did you mean --output?"),
        (["--runner", "DirectRuner", "--input", "x"], 2, "did you mean DirectRunner?"),
        (["--input", "x", "--output", "y"], 2, "missing --model"),
        (["--input", "x", "--output", "y", "--model", "m.keras", "--batch_size", "0"], 2, "--batch_size must be 1 or more"),
        (["--input", "x", "--output", "y", "--model", "m.keras", "--target", "nope"], 2, "invalid choice"),
    ],
)
def test_help_and_option_errors_import_no_tensorflow_and_print_no_native_lines(args, code, says):
    done = cli(*args)
    assert done.returncode == code, done.stderr
    assert says in done.stdout + done.stderr
    assert "IMPORTED []" in done.stdout  # neither TensorFlow nor Keras was imported
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NATIVE_LINES)]
    if code == 2:
        assert len(done.stderr.strip().splitlines()) == 1  # one line


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    for f in range(2):
        write_parquet(tmp / f"in/{f}.parquet", {"id": np.arange(f * 50, f * 50 + 50), "x": rng.normal(size=(50, 3)).astype(np.float32)})
    return tmp, save(model, tmp)


def test_a_job_prints_no_tensorflow_start_up_lines_and_shows_start_up_apart(small_job):
    tmp, model = small_job
    done = cli("--runner", "DirectRunner", "--input", tmp / "in/", "--output", tmp / "out/g", "--model", model, "--keep_columns", "id")
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NATIVE_LINES)], done.stderr
    assert "IMPORTED ['keras', 'tensorflow']" in done.stdout  # a model was needed, so TensorFlow came
    wall = [line for line in done.stdout.splitlines() if line.startswith("wall time:")][0]
    total, startup = float(wall.split()[2]), float(wall.split("start-up ")[1].split()[0])
    assert 0 < startup <= total  # start-up is part of the process's wall time
    assert "rows: 100 in, 100 out, 0 rejected" in done.stdout


def test_a_folder_as_input_reads_its_parquet_files_with_or_without_a_slash(small_job, tmp_path):
    tmp, model = small_job
    (tmp / "in" / "notes.txt").write_text("not parquet, not read")
    for i, folder in enumerate([str(tmp / "in"), str(tmp / "in") + "/"]):
        code = main(["--runner=DirectRunner", f"--input={folder}", f"--output={tmp_path}/o{i}/g", f"--model={model}", "--quiet"])
        assert code == 0
    os.unlink(tmp / "in" / "notes.txt")


def test_an_unquoted_glob_gets_a_hint_to_quote_it(small_job):
    tmp, _ = small_job
    files = sorted(str(p) for p in (tmp / "in").glob("*.parquet"))
    with pytest.raises(OptionsError, match="the shell expanded an unquoted glob; quote it"):
        parse(["--input", *files, "--output", "o"])


def test_a_file_that_is_not_a_model_says_so(small_job, tmp_path, capsys):
    tmp, _ = small_job
    fake = tmp_path / "model.keras"
    fake.write_text("hello")
    assert main(["--runner=DirectRunner", f"--input={tmp}/in", f"--output={tmp_path}/o/g", f"--model={fake}"]) == 2
    err = capsys.readouterr().err
    assert "exists but is not a Keras model" in err and "File not found" not in err


def _stderr_lines_on(tmp, model, terminal: bool) -> str:
    """The job run with progress lines every 0.2 s, stderr on a pseudo-terminal or a pipe; what stderr got."""
    code = (
        "import sys; from pipeline.run import main; "
        f"sys.exit(main(sys.argv[1:], progress_every=0.2))"
    )
    args = [sys.executable, "-c", code, "--runner=DirectRunner", f"--input={tmp}/in", f"--output={tmp}/p{int(terminal)}/g",
            f"--model={model}", "--batch_size=1"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr
    parent, child = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=child, env=env)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([parent], [], [], 1.0)
        if ready:
            try:
                data = os.read(parent, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    assert process.wait(timeout=300) == 0
    os.close(parent)
    return b"".join(chunks).decode(errors="replace")


def test_progress_lines_appear_on_a_terminal_and_not_on_a_pipe(small_job):
    tmp, model = small_job
    on_terminal = [line for line in _stderr_lines_on(tmp, model, True).splitlines() if line.startswith("progress:")]
    assert on_terminal, "no progress line on the terminal"
    assert all(" of 100 rows" in line and "rows/s" in line for line in on_terminal)
    assert "progress:" not in _stderr_lines_on(tmp, model, False)


def test_one_parser_names_the_commands_and_run_is_the_default(capsys):
    from pipeline.cli import command_parser, split_command

    (commands,) = [a for a in command_parser()._actions if a.dest == "command"]
    assert list(commands.choices) == ["run", "influence", "report"]
    assert split_command(["--input", "x"]) == ("run", ["--input", "x"])
    assert split_command(["run", "--input", "x"]) == ("run", ["--input", "x"])
    assert split_command(["influence", "--train", "t"]) == ("influence", ["--train", "t"])
    assert split_command(["report", "out/g", "--top", "3"]) == ("report", ["out/g", "--top", "3"])
    assert main(["--help"]) == 0
    default = capsys.readouterr().out
    assert main(["run", "--help"]) == 0 and capsys.readouterr().out == default
    assert "beam-gradients influence" in default and "beam-gradients report" in default  # --help lists them
    assert main(["influence", "--help"]) == 0 and "usage: beam-gradients influence" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # the report's own parser answers its --help
        main(["report", "--help"])
    assert done.value.code == 0 and "usage: beam-gradients report" in capsys.readouterr().out


def test_debug_adds_the_traceback_on_every_command_the_report_too(tmp_path, capsys):
    """docs/troubleshooting.md: `--debug` on any command; the report's parser refused it as unrecognized."""
    missing = str(tmp_path / "nothing/g")
    for extra in ([], ["--debug"]):
        assert main(["report", missing, *extra]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(f"beam-gradients report: error: {missing}: no output shards")
        assert ("Traceback (most recent call last)" in err) == bool(extra)
