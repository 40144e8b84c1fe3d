"""The worker image's Dockerfile agrees with setup.py: the versions a worker runs are the ones we test.

No Docker engine runs here, so the Dockerfile is read, not built: a TensorFlow,
Keras or Beam on the workers that differs from setup.py's pins, or a Python that
differs from the Beam SDK image's, would fail in ways no test here could show.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_pins() -> dict[str, str]:
    """name -> pinned version, from setup.py's install_requires and its TensorFlow constant."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    pins = {}
    for item in requires.elts:
        text = item.value if isinstance(item, ast.Constant) else None
        if text and "==" in text:
            name, version = text.split("==")
            pins[re.sub(r"\[.*\]", "", name)] = version
    pins["tensorflow"] = constants["TENSORFLOW_VERSION"]
    pins["python_requires"] = next(k.value.value for k in call.keywords if k.arg == "python_requires")
    return pins


def _dockerfile():
    """(instructions as (keyword, text) with line continuations joined, ARG defaults)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    instructions = [tuple(line.split(None, 1)) for line in lines]
    args = dict(re.match(r"(\w+)=(\S+)", arg).groups() for kw, arg in instructions if kw == "ARG" and "=" in arg)
    expanded = [(kw, re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)) for kw, rest in instructions]
    return expanded, args


def test_dockerfile_pins_agree_with_setup_py_and_entrypoint_is_beams_boot():
    pins = _setup_pins()
    instructions, args = _dockerfile()
    images = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    sdk = [re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", image) for image in images]
    (sdk,) = [m for m in sdk if m]
    python_minor, beam_version = sdk.groups()
    assert beam_version == pins["apache-beam"]
    runtime = images[-1]  # the image the workers run
    assert re.fullmatch(rf"python:{re.escape(python_minor)}(-\S+)?", runtime), runtime
    minimum = tuple(int(p) for p in pins["python_requires"].removeprefix(">=").split("."))
    assert tuple(int(p) for p in python_minor.split(".")) >= minimum

    copies = [rest for kw, rest in instructions if kw == "COPY"]
    assert "--from=beam /opt/apache/beam /opt/apache/beam" in copies
    for package in ("pipeline", "transforms"):
        assert f"{package} {package}" in copies
    install, package = [rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest]
    assert f'"tensorflow[and-cuda]=={pins["tensorflow"]}"' in install  # the CUDA build, same version
    assert f'"keras=={pins["keras"]}"' in install
    assert re.search(r"pip install [^&]* \.( |$)", install)  # setup.py's other pins, before the code
    assert re.search(r"pip install [^&]*--no-deps[^&]* \.( |$)", package)  # then the code, pins unchanged
    assert ("ENV", "BEAM_GRADIENTS_TENSORFLOW=tensorflow") in instructions  # no tensorflow-cpu beside it
    entrypoints = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entrypoints == ['["/opt/apache/beam/boot"]']
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow"] and args["KERAS_VERSION"] == pins["keras"]
