"""Load a model (local path or any fsspec URL), share it once per process, pick the device.

Why a process-wide share: a worker runs several threads, each with its own DoFn
instance; loading the model (and tracing its gradient function) per instance
would multiply memory and start-up by the thread count. Beam's `Shared` keeps
one per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import urllib.parse
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from apache_beam.utils.shared import Shared

from transforms import error_line
from transforms.errors import SettingError

if TYPE_CHECKING:
    from transforms.gradients import ModelFunction

LOG = logging.getLogger(__name__)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
T = TypeVar("T")


class ModelError(SettingError):
    """A model that cannot be loaded; the message names the path and why (a template: see transforms.errors)."""


def is_remote(path: str) -> bool:
    scheme = urllib.parse.urlparse(path).scheme
    return len(scheme) > 1 and scheme != "file"


def redact(path: str) -> str:
    """The path without user info or query string, which may hold credentials."""
    if not is_remote(path):
        return path
    parts = urllib.parse.urlsplit(path)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, path: str) -> str:
    """`text` (a backend's error message) without the credentials `path` may carry."""
    parts = urllib.parse.urlsplit(path)
    secrets = [path, parts.query, parts.netloc.rpartition("@")[0]] if is_remote(path) else []
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, redact(path) if secret == path else "***")
    return text


def local_copy(path: str) -> str:
    """A local path for `path`: remote models are copied once into a per-machine cache."""
    if not is_remote(path):
        local = path[len("file://") :] if path.startswith("file://") else path
        if not os.path.exists(local):
            raise ModelError(f"model not found: {path}")
        return local
    import fsspec

    fs, remote = fsspec.core.url_to_fs(path)
    # Keyed by process too: a model replaced at the same URL is fetched afresh by the next job.
    digest = hashlib.sha256(f"{path}\0{os.getpid()}".encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "beam-gradients-models", digest)
    # Named from the URL's path alone: a query string may hold a token.
    target = os.path.join(folder, os.path.basename(urllib.parse.urlsplit(path).path.rstrip("/")) or "model")
    if os.path.exists(target):
        return target
    try:
        if not fs.exists(remote):
            raise ModelError(f"model not found: {redact(path)}")
        os.makedirs(folder, exist_ok=True)
        partial = f"{target}.partial"
        if fs.info(remote).get("type") == "directory":  # a SavedModel
            fs.get(remote.rstrip("/") + "/", partial, recursive=True)
        else:  # get_file: plain `get` makes a folder of a file whose URL has a query string
            fs.get_file(remote, partial)
        os.replace(partial, target)
    except ModelError:
        raise
    except Exception as err:  # the filesystem's own errors vary by backend
        raise ModelError(f"cannot copy model {redact(path)}: {scrub(str(err), path)}") from err
    return target


def content_sha256(local: str) -> str:
    """sha256 of the model file, or of every file (with its relative path) in a directory."""
    digest = hashlib.sha256()
    files = [local]
    if os.path.isdir(local):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(local) for f in names)
    for name in files:
        if os.path.isdir(local):
            digest.update(os.path.relpath(name, local).encode() + b"\0")
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(path: str, trust_model_code: bool = False) -> ModelFunction:
    """Load a `.keras`, `.h5` or SavedModel directory.

    Keras `safe_mode` stays on unless `trust_model_code`: a model that carries
    code (a `Lambda` layer) is refused, and none of its code runs.
    """
    from transforms.gradients import from_keras, from_saved_model  # TensorFlow: only once a model is needed

    local = local_copy(path)
    shown = redact(path)
    try:
        if os.path.isdir(local):
            if not os.path.exists(os.path.join(local, "saved_model.pb")):
                raise ModelError(f"model {shown} is a directory without saved_model.pb, so not a SavedModel")
            import tensorflow as tf

            return from_saved_model(tf.saved_model.load(local))
        if not local.endswith(KERAS_SUFFIXES):
            raise ModelError(f"model {shown}: unknown format; use a .keras or .h5 file or a SavedModel directory")
        not_a_model = _not_a_model(local)
        if not_a_model:
            raise ModelError(f"model {shown} exists but is not a Keras model: {not_a_model}")
        import keras

        model = keras.models.load_model(local, compile=False, safe_mode=not trust_model_code)
        return from_keras(model)
    except ModelError:
        raise
    except Exception as err:
        text = str(err)
        if "safe_mode" in text:
            raise ModelError(
                "model {shown} contains code (a Lambda layer or custom function) that Keras safe_mode "
                "refuses to load, since loading it would run that code; pass {trust_model_code} only if "
                "you trust where the model came from",
                shown=shown,
            ) from err
        missing = re.search(r"Could not locate (?:function|class) '([^']+)'", text)
        if missing:
            raise ModelError(
                f"model {shown} uses {missing.group(1)!r}, which is not registered here: import the module "
                "that defines it (decorated with @keras.saving.register_keras_serializable) in the workers"
            ) from err
        raise ModelError(f"model {shown} could not be loaded: {error_line(err)}") from err


def _not_a_model(local: str) -> str | None:
    """Why a file that exists cannot be a model of its suffix (a .keras file is a zip, an .h5 file HDF5), or None."""
    if not os.path.isfile(local):
        return None
    with open(local, "rb") as fh:
        head = fh.read(8)
    if local.endswith(".keras") and not head.startswith(b"PK"):
        return "a .keras file is a zip archive, and this one is not"
    if local.endswith((".h5", ".hdf5")) and head != b"\x89HDF\r\n\x1a\n":
        return "an .h5 file is HDF5, and this one is not"
    return None


def pick_device() -> str:
    """The GPU where TensorFlow sees one (with memory growth on), else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth is fixed by then
            pass
    device = "/GPU:0" if gpus else "/CPU:0"
    LOG.info("beam-gradients computes on %s (%d GPU(s) visible, pid %d)", device, len(gpus), os.getpid())
    return device


_loads = 0
_loads_lock = threading.Lock()


def process_loads() -> int:
    """How many models this process has loaded: readable on a worker where the runner reports no counters."""
    return _loads


def _count_load() -> None:
    global _loads
    with _loads_lock:
        _loads += 1


class Loaded(Generic[T]):
    """What was built on a loaded model, plus whether its load has been counted yet."""

    def __init__(self, value: T, device: str):
        self.value = value
        self.device = device
        self._uncounted = True
        self._lock = threading.Lock()

    def take_new_load(self) -> bool:
        """True exactly once per load, so a metric counts loads, not acquirers."""
        with self._lock:
            fresh, self._uncounted = self._uncounted, False
            return fresh


class ProcessModel:
    """A model loaded at most once per process, whatever the number of threads or DoFns.

    Picklable: a copy sent to a worker shares the same process-wide slot as the
    original, so the launcher's own load is reused when the runner is in-process;
    each job makes its own, so a later job never gets an earlier job's model. The
    content hash is taken at launch: a worker that finds the file changed since
    then refuses it, rather than mixing two models in one output.
    """

    def __init__(self, path: str, trust_model_code: bool = False):
        self.path = path
        self.trust_model_code = trust_model_code
        self.sha256 = content_sha256(local_copy(path))
        self._hashed_in = os.getpid()  # a copy unpickled in another process hashes again
        self._shared = Shared()

    def acquire(self, build: Callable[[ModelFunction, str], T], tag: str) -> Loaded[T]:
        """The process's `build(model, device)` result for this model and `tag`, made on first use."""

        def construct():
            if self._hashed_in != os.getpid():
                sha = content_sha256(local_copy(self.path))
                if sha != self.sha256:
                    raise ModelError(
                        f"model {redact(self.path)} changed after the job started "
                        f"(sha256 {self.sha256[:12]}... then, {sha[:12]}... now); rerun the job"
                    )
            device = pick_device()
            _count_load()
            return Loaded(build(load_model(self.path, self.trust_model_code), device), device)

        return self._shared.acquire(construct, tag=tag)
