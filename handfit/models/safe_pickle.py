"""Load MANO ``.pkl`` files without chumpy, and without running code from the file.

The official MANO pickles were written by Python 2 with chumpy objects
(``chumpy.ch.Ch``, ``chumpy.reordering.Select``) and an old-scipy sparse matrix
(``scipy.sparse.csc.csc_matrix``). chumpy does not import on current Python and
numpy, and a plain ``pickle.load`` would run whatever callable a hostile file
names. :func:`load_mano_pickle` unpickles through a ``find_class`` that admits
only the handful of globals such files need — numpy's array reconstruction,
dtypes and scalars, sparse matrices and the chumpy classes, the latter two
replaced by inert stand-ins — and refuses everything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ...) with :class:`handfit.errors.ModelError`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import ModelError


class _Inert:
    """Stand-in for a pickled object: records its state, never runs its code."""

    _state: dict = {}

    def __init__(self, *args, **kwargs):  # noqa: D401 - pickle may call cls() or cls.__new__(cls)
        self._args = args
        self._state = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}   # (dict, slotstate)
        if not isinstance(state, dict):
            raise ModelError(f"unexpected pickled state for {type(self).__name__}: {type(state).__name__}")
        self._state = state

    def value(self) -> np.ndarray:
        raise NotImplementedError


class _ChStandIn(_Inert):
    """``chumpy.ch.Ch``: a wrapped array in its ``x`` attribute."""

    def value(self):
        if "x" not in self._state:
            raise ModelError("pickled chumpy.Ch object without an 'x' array")
        return _resolve(self._state["x"])


class _SelectStandIn(_Inert):
    """``chumpy.reordering.Select``: ``a.ravel()[idxs]``, reshaped to ``preferred_shape``."""

    def value(self):
        s = self._state
        out = np.asarray(_resolve(s["a"])).ravel()[np.asarray(_resolve(s["idxs"])).ravel().astype(np.int64)]
        if s.get("preferred_shape") is not None:
            out = out.reshape(tuple(s["preferred_shape"]))
        return out


class _ReshapeStandIn(_Inert):
    """``chumpy.reordering.Reshape``: ``a.reshape(newshape)``."""

    def value(self):
        return np.asarray(_resolve(self._state["a"])).reshape(self._state["newshape"])


class _SparseStandIn(_Inert):
    """An old or new ``scipy.sparse`` csc/csr matrix: rebuilt with current scipy, then densified."""

    fmt = "csc"

    def value(self):
        import scipy.sparse as sp

        s = self._state
        shape = s.get("_shape", s.get("shape"))
        try:
            parts = (np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"]))
            cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
            return np.asarray(cls(parts, shape=tuple(int(n) for n in shape)).toarray())
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"malformed pickled sparse matrix ({e})") from e


class _CsrStandIn(_SparseStandIn):
    fmt = "csr"


def _resolve(obj):
    """Replace stand-ins by their arrays (recursively through lists/tuples/dicts)."""
    if isinstance(obj, _Inert):
        return obj.value()
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


# -- the only callables a file may name ----------------------------------------------
class _NDArrayName:
    """What the name ``numpy.ndarray`` resolves to: usable only as _reconstruct's subtype."""

    def __new__(cls, *args, **kwargs):
        raise ModelError("refused to call numpy.ndarray directly from a model pickle")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDArrayName:
        raise ModelError(f"refused to reconstruct an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _scalar  # type: ignore[import-not-found]
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _scalar  # type: ignore[attr-defined,no-redef]


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ModelError("refused a numpy scalar without a plain dtype")
    return _scalar(dtype, data) if data is not None else _scalar(dtype)


def _np_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ModelError("refused a numpy buffer of object dtype")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(text, encoding="utf-8"):
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise ModelError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


def _copyreg_reconstructor(cls, base, state):
    # protocol 0/1 pickles create objects via copy_reg._reconstructor(cls, object, None)
    if not (isinstance(cls, type) and issubclass(cls, _Inert)) or base is not object or state is not None:
        raise ModelError(f"refused copyreg._reconstructor({cls!r}, {base!r})")
    return cls.__new__(cls)


def _np_dtype(*args):
    if args and not isinstance(args[0], str):
        raise ModelError("refused numpy.dtype with a non-string type code")
    return np.dtype(*args)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    **{(m, "_reconstruct"): _np_reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _np_scalar for m in _NUMPY_MODULES},
    ("numpy", "ndarray"): _NDArrayName,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("chumpy.ch", "Ch"): _ChStandIn,
    ("chumpy", "Ch"): _ChStandIn,
    ("chumpy.reordering", "Select"): _SelectStandIn,
    ("chumpy.reordering", "Reshape"): _ReshapeStandIn,
    **{(m, "csc_matrix"): _SparseStandIn
       for m in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse")},
    **{(m, "csr_matrix"): _CsrStandIn
       for m in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ModelError(
                f"refused to load {module}.{name} from a model pickle: only numpy arrays, "
                "scipy sparse matrices and chumpy arrays are allowed in MANO files") from None

    def persistent_load(self, pid):
        raise ModelError("refused a persistent id in a model pickle")


def loads_restricted(data: bytes) -> object:
    """Unpickle ``data`` with the restricted loader (stand-ins are not resolved)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _load_restricted(path: Path, what: str):
    """Read and unpickle ``path`` with the restricted loader; every failure is a ModelError naming it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {what} {path}: {e}") from e
    try:
        return loads_restricted(raw)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated/garbage files raise anything
        raise ModelError(f"{path} is not a readable {what} ({type(e).__name__}: {e})") from e


def load_mano_pickle(path) -> dict:
    """Read a MANO ``.pkl`` into a plain dict of numpy arrays (sparse matrices densified).

    Raises :class:`ModelError` for a missing, malformed or unsafe file.
    """
    path = Path(path)
    obj = _load_restricted(path, "MANO pickle")
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        try:
            value = _resolve(value)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ModelError(f"{path}: malformed entry {key!r} ({type(e).__name__}: {e})") from e
        if isinstance(value, (np.ndarray, np.generic, int, float, list, tuple)):
            try:
                value = np.asarray(value)
            except ValueError:
                pass
        out[str(key)] = value
    return out


def load_data_pickle(path) -> object:
    """Read a plain data pickle (dicts, lists, numpy arrays, numbers, strings; e.g. a
    dataset's annotations) with the same restricted loader: nothing in it can run code.

    Raises :class:`ModelError` for a missing, malformed or unsafe file.
    """
    path = Path(path)
    obj = _load_restricted(path, "pickle")
    try:
        return _resolve(obj)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - malformed entries raise anything
        raise ModelError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from e
