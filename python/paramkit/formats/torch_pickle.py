"""The allowlist unpickler for a PyTorch checkpoint's data.pkl: a small pickle machine of our own that builds
plain Python values and inert stand-ins (StorageRef, TensorRef) for the few torch globals a state dict needs.
It never imports a module, never calls a function named by the file, and rejects every other global or
object-building opcode as unsafe_pickle; torch itself is never imported."""
from __future__ import annotations

import _compat_pickle
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError

__all__ = ["ERROR_CODES", "STORAGE_DTYPES", "TORCH_DTYPES", "StorageRef", "TensorRef", "TorchGlobal", "load"]

ERROR_CODES: dict[str, str] = {
    "pickle_invalid": "data.pkl is not a well-formed pickle of a checkpoint: truncated, an unknown opcode, a "
                      "stack or memo error, no STOP, Python 2 strings, or arguments of the wrong kind for a "
                      "tensor-rebuilding function or a persistent storage id",
}

# torch dtype name (torch.<name>, as torch pickles a dtype) -> paramkit dtype name; None: paramkit has none.
TORCH_DTYPES: dict[str, str | None] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32",
    "int64": "I64", "uint64": "U64", "bool": "BOOL", "complex64": "C64",
    # torch dtypes without a paramkit dtype (a tensor of one is dtype_unsupported)
    "complex128": None, "complex32": None, "float4_e2m1fn_x2": None,
    "qint8": None, "quint8": None, "qint32": None, "quint4x2": None, "quint2x4": None,
    "bits8": None, "bits16": None, "bits1x8": None, "bits2x4": None, "bits4x2": None,
    **{f"int{b}": None for b in range(1, 8)}, **{f"uint{b}": None for b in range(1, 8)},
}

# Storage class name in a persistent id -> the torch dtype of its elements. The legacy typed classes are
# torch.<Name>Storage; dtypes newer than them are saved as torch.storage.UntypedStorage (bytes) with the
# dtype passed to _rebuild_tensor_v3.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}


@dataclass(frozen=True, eq=False)
class TorchGlobal:
    """An allowlisted global, inert: `kind` says what paramkit does with it, `value` a dtype name."""
    module: str
    name: str
    kind: str           # rebuild_v1/v2/v3, parameter, parameter_with_state, from_type_v2, ordered_dict, size,
                        # tensor_type, storage_type, dtype
    value: str | None = None

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A persistent id ('storage', type, key, location, numel): data/<key> holds numel elements of dtype."""
    key: str
    dtype: str          # torch dtype name of the storage's elements ("uint8" for UntypedStorage)
    numel: int
    location: str


@dataclass(frozen=True, eq=False)
class TensorRef:
    """The arguments of one tensor-rebuilding call, unvalidated (the caller knows the tensor's name)."""
    storage: Any
    offset: Any
    size: Any
    stride: Any
    dtype: Any          # None: the storage's dtype (v1/v2); else the dtype argument of _rebuild_tensor_v3
    metadata: Any       # None or the tensor-metadata dict (conj / neg bits)


def _allowlist() -> dict[tuple[str, str], TorchGlobal]:
    table = {}

    def add(module: str, name: str, kind: str, value: str | None = None) -> None:
        table[(module, name)] = TorchGlobal(module, name, kind, value)

    add("torch._utils", "_rebuild_tensor", "rebuild_v1")
    add("torch._utils", "_rebuild_tensor_v2", "rebuild_v2")
    add("torch._utils", "_rebuild_tensor_v3", "rebuild_v3")
    add("torch._utils", "_rebuild_parameter", "parameter")
    add("torch._utils", "_rebuild_parameter_with_state", "parameter_with_state")
    add("torch._tensor", "_rebuild_from_type_v2", "from_type_v2")
    add("collections", "OrderedDict", "ordered_dict")
    add("torch", "Size", "size")
    add("torch", "Tensor", "tensor_type")
    add("torch.nn.parameter", "Parameter", "tensor_type")
    for storage, dtype in STORAGE_DTYPES.items():
        if storage == "UntypedStorage":
            add("torch.storage", storage, "storage_type", dtype)
        else:
            add("torch", storage, "storage_type", dtype)
            add("torch.cuda", storage, "storage_type", dtype)
    for dtype in TORCH_DTYPES:
        add("torch", dtype, "dtype", dtype)
    return table


_ALLOWED = _allowlist()
_TENSOR_FUNCS = ("rebuild_v1", "rebuild_v2", "rebuild_v3", "parameter", "parameter_with_state")
_REBUILD_ARITY = {"rebuild_v1": (4,), "rebuild_v2": (6, 7), "rebuild_v3": (7, 8), "parameter": (3,),
                  "parameter_with_state": (4,), "from_type_v2": (4,)}

# Opcodes that build objects by calling or importing, or need out-of-band buffers: never executed.
_UNSAFE_OPCODES = {
    ord("i"): "INST", ord("o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2",
    0x84: "EXT4", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}
_U2 = struct.Struct("<H")
_I4 = struct.Struct("<i")
_U4 = struct.Struct("<I")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


class _Invalid(Exception):
    """Internal: data.pkl is malformed (turned into FormatError pickle_invalid with the opcode position)."""


def _unsafe(message: str, path: str | None) -> FormatError:
    return FormatError("unsafe_pickle", message + "; paramkit never imports or calls anything named by a "
                       "checkpoint (re-save the weights as a plain state_dict, or as safetensors)", path=path)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The global the standard unpickler would import for (module, name): protocol 0-2 pickles written by
    Python 3 use Python 2 names (__builtin__.eval, commands.Popen), mapped back as pickle's fix_imports does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _resolve(module: str, name: str, path: str | None) -> TorchGlobal:
    module3, name3 = _python3_name(module, name)
    g = _ALLOWED.get((module3, name3))
    if g is None:
        also = f" (that is, {module3}.{name3})" if (module3, name3) != (module, name) else ""
        raise _unsafe(f"data.pkl asks for the global {module}.{name}{also}, which is not in the allowlist of "
                      "tensor-rebuilding names", path)
    return g


def _apply(func: Any, args: Any, path: str | None) -> Any:
    """REDUCE: what the allowlisted callable would produce, built from its arguments without calling it."""
    if type(func) is not TorchGlobal:
        raise _unsafe(f"data.pkl calls a {type(func).__name__} value", path)
    if type(args) is not tuple:
        raise _Invalid(f"REDUCE arguments are a {type(args).__name__}, expected a tuple")
    kind = func.kind
    if kind == "ordered_dict":
        if not args:
            return {}
        if len(args) == 1 and type(args[0]) in (list, tuple):
            out = {}
            for pair in args[0]:
                if type(pair) not in (list, tuple) or len(pair) != 2:
                    raise _Invalid("OrderedDict items are not (key, value) pairs")
                out[pair[0]] = pair[1]
            return out
        raise _Invalid("OrderedDict is called with arguments other than () or a list of pairs")
    if kind == "size":
        if len(args) != 1 or type(args[0]) not in (list, tuple):
            raise _Invalid("torch.Size is called with arguments other than one tuple")
        return tuple(args[0])
    arity = _REBUILD_ARITY.get(kind)
    if arity is None:
        raise _unsafe(f"data.pkl calls {func.qualname}, which paramkit accepts only as a value", path)
    if len(args) not in arity:
        raise _Invalid(f"{func.qualname} gets {len(args)} arguments, expected "
                       + " or ".join(map(str, arity)))
    if kind == "rebuild_v1":
        return TensorRef(args[0], args[1], args[2], args[3], None, None)
    if kind == "rebuild_v2":
        return TensorRef(args[0], args[1], args[2], args[3], None, args[6] if len(args) == 7 else None)
    if kind == "rebuild_v3":
        return TensorRef(args[0], args[1], args[2], args[3], args[6], args[7] if len(args) == 8 else None)
    if kind in ("parameter", "parameter_with_state"):
        if type(args[0]) is not TensorRef:
            raise _Invalid(f"{func.qualname} gets a {type(args[0]).__name__}, expected a tensor")
        return args[0]
    # from_type_v2(func, new_type, args, state): only plain tensors and Parameters; the state is dropped
    inner, new_type, inner_args, _state = args
    if type(new_type) is not TorchGlobal or new_type.kind != "tensor_type":
        what = new_type.qualname if type(new_type) is TorchGlobal else type(new_type).__name__
        raise _unsafe(f"data.pkl rebuilds a tensor as {what}, not torch.Tensor or torch.nn.Parameter", path)
    if type(inner) is not TorchGlobal or inner.kind not in _TENSOR_FUNCS:
        what = inner.qualname if type(inner) is TorchGlobal else type(inner).__name__
        raise _unsafe(f"data.pkl rebuilds a tensor subclass with {what}", path)
    return _apply(inner, inner_args, path)


def _persistent(pid: Any) -> StorageRef:
    if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
        raise _Invalid("a persistent id is not ('storage', type, key, location, numel)")
    _, stype, key, location, numel = pid
    if type(stype) is not TorchGlobal or stype.kind != "storage_type":
        raise _Invalid("a persistent id's storage type is not a torch storage class")
    if type(key) is not str or type(location) is not str or type(numel) is not int or numel < 0:
        raise _Invalid("a persistent id's key, location or numel has the wrong type")
    return StorageRef(key, stype.value, numel, location)


def load(data: bytes, path: str | None = None) -> Any:
    """Run data.pkl on the allowlist machine and return the object it builds: dicts, lists, tuples, str,
    int, float, bool, None, bytes, TorchGlobal (dtype values), StorageRef and TensorRef.

    Every step consumes at least one byte, so the time is linear in len(data). Raises FormatError
    unsafe_pickle for a global outside the allowlist or an object-building opcode, pickle_invalid for a
    malformed pickle.
    """
    data = bytes(data)
    n = len(data)
    stack: list = []
    metastack: list = []
    memo: dict = {}
    pos = 0
    at = 0
    op = 0

    def readline() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise _Invalid("a text argument is not terminated by a newline")
        line = data[pos:end]
        pos = end + 1
        return line

    def take(k: int) -> bytes:
        nonlocal pos
        if k < 0 or pos + k > n:
            raise _Invalid(f"an argument of {k:,} bytes runs past the end of data.pkl")
        out = data[pos:pos + k]
        pos += k
        return out

    try:
        while True:
            if pos >= n:
                raise _Invalid("data.pkl ends without a STOP opcode")
            at = pos
            op = data[pos]
            pos += 1
            # the opcodes of torch.save's pickles first, most frequent first
            if op == 0x72:                                   # r LONG_BINPUT
                memo[_U4.unpack_from(data, pos)[0]] = stack[-1]
                pos += 4
            elif op == 0x68:                                 # h BINGET
                stack.append(memo[data[pos]])
                pos += 1
            elif op == 0x4B:                                 # K BININT1
                stack.append(data[pos])
                pos += 1
            elif op == 0x28:                                 # ( MARK
                metastack.append(stack)
                stack = []
            elif op == 0x58:                                 # X BINUNICODE
                (k,) = _U4.unpack_from(data, pos)
                pos += 4
                if pos + k > n:
                    raise _Invalid(f"a string of {k:,} bytes runs past the end of data.pkl")
                stack.append(data[pos:pos + k].decode("utf-8", "surrogatepass"))
                pos += k
            elif op == 0x74:                                 # t TUPLE
                items = stack
                stack = metastack.pop()
                stack.append(tuple(items))
            elif op == 0x85:                                 # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x52:                                 # R REDUCE
                args = stack.pop()
                stack[-1] = _apply(stack[-1], args, path)
            elif op == 0x51:                                 # Q BINPERSID
                stack[-1] = _persistent(stack[-1])
            elif op == 0x89:                                 # NEWFALSE
                stack.append(False)
            elif op == 0x29:                                 # ) EMPTY_TUPLE
                stack.append(())
            elif op == 0x71:                                 # q BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x6A:                                 # j LONG_BINGET
                stack.append(memo[_U4.unpack_from(data, pos)[0]])
                pos += 4
            elif op == 0x86:                                 # TUPLE2
                b = stack.pop()
                stack[-1] = (stack[-1], b)
            elif op == 0x87:                                 # TUPLE3
                c = stack.pop()
                b = stack.pop()
                stack[-1] = (stack[-1], b, c)
            elif op == 0x88:                                 # NEWTRUE
                stack.append(True)
            elif op == 0x7D:                                 # } EMPTY_DICT
                stack.append({})
            elif op == 0x5D:                                 # ] EMPTY_LIST
                stack.append([])
            elif op == 0x4E:                                 # N NONE
                stack.append(None)
            elif op == 0x75:                                 # u SETITEMS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) is not dict:
                    raise _Invalid(f"SETITEMS on a {type(target).__name__}")
                if len(items) % 2:
                    raise _Invalid("SETITEMS with an odd number of items")
                for i in range(0, len(items), 2):
                    target[items[i]] = items[i + 1]
            elif op == 0x73:                                 # s SETITEM
                value = stack.pop()
                key = stack.pop()
                target = stack[-1]
                if type(target) is not dict:
                    raise _Invalid(f"SETITEM on a {type(target).__name__}")
                target[key] = value
            elif op == 0x65:                                 # e APPENDS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) is not list:
                    raise _Invalid(f"APPENDS to a {type(target).__name__}")
                target.extend(items)
            elif op == 0x61:                                 # a APPEND
                value = stack.pop()
                target = stack[-1]
                if type(target) is not list:
                    raise _Invalid(f"APPEND to a {type(target).__name__}")
                target.append(value)
            elif op == 0x4A:                                 # J BININT
                stack.append(_I4.unpack_from(data, pos)[0])
                pos += 4
            elif op == 0x4D:                                 # M BININT2
                stack.append(_U2.unpack_from(data, pos)[0])
                pos += 2
            elif op == 0x94:                                 # MEMOIZE
                memo[len(memo)] = stack[-1]
            elif op == 0x8C:                                 # SHORT_BINUNICODE
                k = data[pos]
                pos += 1
                stack.append(take(k).decode("utf-8", "surrogatepass"))
            elif op == 0x8A:                                 # LONG1
                k = data[pos]
                pos += 1
                stack.append(int.from_bytes(take(k), "little", signed=True))
            elif op == 0x8B:                                 # LONG4
                (k,) = _I4.unpack_from(data, pos)
                pos += 4
                stack.append(int.from_bytes(take(k), "little", signed=True))
            elif op == 0x47:                                 # G BINFLOAT
                stack.append(_F8.unpack_from(data, pos)[0])
                pos += 8
            elif op == 0x63:                                 # c GLOBAL
                module = readline().decode("utf-8")
                name = readline().decode("utf-8")
                stack.append(_resolve(module, name, path))
            elif op == 0x93:                                 # STACK_GLOBAL
                name = stack.pop()
                module = stack.pop()
                if type(module) is not str or type(name) is not str:
                    raise _Invalid("STACK_GLOBAL with a module or name that is not a string")
                stack.append(_resolve(module, name, path))
            elif op == 0x62:                                 # b BUILD
                state = stack.pop()
                target = stack[-1]
                if type(target) is not dict:   # OrderedDict attributes (a state dict's _metadata): dropped
                    what = target.qualname if type(target) is TorchGlobal else type(target).__name__
                    raise _unsafe(f"data.pkl sets the state of a {what} (BUILD)", path)
                del state
            elif op == 0x95:                                 # FRAME (framing is only a read-ahead hint)
                take(8)
            elif op == 0x80:                                 # PROTO
                if data[pos] > 5:
                    raise _Invalid(f"pickle protocol {data[pos]} is newer than 5")
                pos += 1
            elif op == 0x2E:                                 # . STOP
                if not stack or metastack:
                    raise _Invalid("STOP with an unbalanced stack")
                return stack.pop()
            elif op == 0x30:                                 # 0 POP
                if stack:
                    stack.pop()
                else:
                    stack = metastack.pop()
            elif op == 0x31:                                 # 1 POP_MARK
                stack = metastack.pop()
            elif op == 0x32:                                 # 2 DUP
                stack.append(stack[-1])
            elif op == 0x6C:                                 # l LIST
                items = stack
                stack = metastack.pop()
                stack.append(items)
            elif op == 0x64:                                 # d DICT
                items = stack
                stack = metastack.pop()
                if len(items) % 2:
                    raise _Invalid("DICT with an odd number of items")
                stack.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})
            elif op == 0x49:                                 # I INT (I00 / I01 are False / True)
                line = readline()
                stack.append(False if line == b"00" else True if line == b"01" else int(line))
            elif op == 0x4C:                                 # L LONG
                line = readline()
                stack.append(int(line[:-1] if line.endswith(b"L") else line))
            elif op == 0x46:                                 # F FLOAT
                stack.append(float(readline()))
            elif op == 0x56:                                 # V UNICODE
                stack.append(readline().decode("raw-unicode-escape"))
            elif op == 0x8D:                                 # BINUNICODE8
                (k,) = _U8.unpack_from(data, pos)
                pos += 8
                stack.append(take(k).decode("utf-8", "surrogatepass"))
            elif op == 0x42:                                 # B BINBYTES
                (k,) = _U4.unpack_from(data, pos)
                pos += 4
                stack.append(take(k))
            elif op == 0x43:                                 # C SHORT_BINBYTES
                k = data[pos]
                pos += 1
                stack.append(take(k))
            elif op == 0x8E:                                 # BINBYTES8
                (k,) = _U8.unpack_from(data, pos)
                pos += 8
                stack.append(take(k))
            elif op == 0x67:                                 # g GET
                stack.append(memo[int(readline())])
            elif op == 0x70:                                 # p PUT
                memo[int(readline())] = stack[-1]
            elif op == 0x50:                                 # P PERSID (text id: never a storage tuple)
                stack.append(_persistent(readline().decode("ascii")))
            elif op in _UNSAFE_OPCODES:
                what = _UNSAFE_OPCODES[op]
                if op == 0x69:                               # INST names a class to instantiate
                    module = readline().decode("utf-8", "replace")
                    name = readline().decode("utf-8", "replace")
                    what += f" of {module}.{name}"
                raise _unsafe(f"data.pkl uses the opcode {what}, which builds objects", path)
            elif op in (0x53, 0x54, 0x55):                   # STRING / BINSTRING / SHORT_BINSTRING
                raise _Invalid("Python 2 str opcodes (STRING/BINSTRING) do not occur in torch.save files")
            else:
                raise _Invalid(f"unknown opcode 0x{op:02x}")
    except FormatError:
        raise
    except _Invalid as e:
        raise FormatError("pickle_invalid", f"data.pkl byte {at} (opcode 0x{op:02x}): {e}", path=path) from None
    except (IndexError, KeyError, struct.error, ValueError, TypeError, OverflowError) as e:
        # stack/metastack underflow, a memo miss, a short argument, a bad number or string, an unhashable key
        detail = {IndexError: "stack underflow or argument past the end", KeyError: "memo has no entry",
                  TypeError: "unhashable dict key"}.get(type(e), str(e)[:200])
        raise FormatError("pickle_invalid", f"data.pkl byte {at} (opcode 0x{op:02x}): {detail}",
                          path=path) from None
