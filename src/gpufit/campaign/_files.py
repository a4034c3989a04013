"""Campaign files: atomic writes, checksummed result files, and their validation.

A result (or checkpoint) is a ``.npz`` holding ``teststat_sb`` and ``teststat_b``
[mus, toys] and ``meta``: a JSON string with the job's identity (campaign id, job
name, mu indices, toy range, seed), the device, and a SHA-256 checksum over the
identity and the arrays' bytes. Anything that does not load, or whose checksum does
not match, is :class:`BrokenResult`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from ..exceptions import BrokenResult, CampaignError

RESULT_FORMAT = "gpufit-result/1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os has no getter) and put it back
IDENTITY = ("campaign_id", "job", "mu_indices", "toy_start", "toy_stop", "seed")


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, fsync, then rename: a
    reader sees the old file or the whole new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would, so that
        # colleagues sharing the campaign directory can read and merge it
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str, what: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CampaignError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CampaignError(f"{what} {path} is not valid JSON ({err}); re-run 'gpufit campaign plan'") from None


def checksum(identity: dict, teststat_sb: np.ndarray, teststat_b: np.ndarray, extra: bytes = b"") -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({k: identity[k] for k in IDENTITY}, sort_keys=True).encode())
    for array in (teststat_sb, teststat_b):
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    digest.update(extra)
    return digest.hexdigest()


def write_result(path: str, meta: dict, teststat_sb: np.ndarray, teststat_b: np.ndarray, extra_arrays=None) -> None:
    """Write a result or checkpoint atomically, with its checksum in ``meta``."""
    extra_arrays = dict(extra_arrays or {})
    meta = dict(meta, format=RESULT_FORMAT)
    meta["checksum"] = checksum(meta, teststat_sb, teststat_b, _extra_bytes(extra_arrays))
    buffer = io.BytesIO()
    np.savez(buffer, teststat_sb=teststat_sb, teststat_b=teststat_b, meta=np.array(json.dumps(meta)),
             **extra_arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _extra_bytes(arrays: dict) -> bytes:
    return b"".join(np.ascontiguousarray(arrays[k], dtype="<f8").tobytes() for k in sorted(arrays))


def read_result(path: str, extra=()) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Load and verify a result: (meta, teststat_sb, teststat_b, extra arrays).

    Raises:
        BrokenResult: the file is truncated, not a result, or fails its checksum.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            sb, b = np.asarray(npz["teststat_sb"], dtype=float), np.asarray(npz["teststat_b"], dtype=float)
            arrays = {k: np.asarray(npz[k], dtype=float) for k in extra}
    except KeyError as err:
        raise BrokenResult(f"{path} is not a gpufit result: it lacks the array {err}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        # numpy's own messages (e.g. advice on allow_pickle) do not fit a damaged result
        raise BrokenResult(f"{path} is truncated or not a gpufit result (an .npz archive that "
                           f"numpy cannot read: {type(err).__name__})") from None
    if meta.get("format") != RESULT_FORMAT or any(k not in meta for k in IDENTITY):
        raise BrokenResult(f"{path} is not a {RESULT_FORMAT} file")
    want = checksum(meta, sb, b, _extra_bytes(arrays))
    if meta.get("checksum") != want:
        raise BrokenResult(f"{path} fails its checksum (stored {meta.get('checksum')}, computed {want}): corrupt")
    shape = (len(meta["mu_indices"]), meta["toy_stop"] - meta["toy_start"])
    if sb.shape != shape or b.shape != shape:
        raise BrokenResult(f"{path} holds arrays of shape {sb.shape}/{b.shape}, its toy range needs {shape}")
    return meta, sb, b, arrays
