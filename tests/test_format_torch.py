"""Tests of the PyTorch zip-checkpoint reader (paramkit.formats.torch_zip / torch_pickle / stored /
known_magics): files written by real torch.save, checked against torch.load's values; hand-built malformed
archives and pickles; malicious pickles that must never run; fuzzing."""
from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramkit.errors import FormatError
from paramkit.formats import known_magics, torch_pickle
from paramkit.formats.stored import ParsedArchive, StoredBlob, is_contiguous, iter_blob, read_zip_members
from paramkit.formats.torch_zip import parse_torch


# --- sources and readers used by the tests -------------------------------------------------------------------
class LocalFileSource:
    """The Source interface over a local file (tests only; the lead's sources module has the real one)."""

    def __init__(self, path):
        self.path = str(path)
        self.name = self.path
        self.size = os.path.getsize(self.path)

    def read_at(self, offset: int, length: int) -> bytes:
        assert 0 <= offset and offset + length <= self.size, "read outside the file"
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"short read at {offset}")
        return data


class BytesSource:
    """The Source interface over bytes in memory; fails the test on any read outside them."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = bytes(data)
        self.size = len(self.data)
        self.name = name

    def read_at(self, offset: int, length: int) -> bytes:
        assert 0 <= offset and length >= 0 and offset + length <= self.size, "read outside the file"
        return self.data[offset:offset + length]


def parse(path) -> ParsedArchive:
    return parse_torch(LocalFileSource(path))


# element size per paramkit dtype name, written out here independently of paramkit.dtypes
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1,
            "F8_E5M2FNUZ": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
            "I64": 8, "U64": 8, "BOOL": 1, "C64": 8}
TORCH_TO_PARAMKIT = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ", torch.float8_e8m0fnu: "F8_E8M0", torch.int8: "I8", torch.uint8: "U8",
    torch.int16: "I16", torch.uint16: "U16", torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64",
    torch.uint64: "U64", torch.bool: "BOOL", torch.complex64: "C64",
}


def blob_bytes(path, blob: StoredBlob) -> bytes:
    """A blob's bytes: stored ones straight from the file at the descriptor's offset, deflated ones inflated."""
    if blob.compression == "stored":
        with open(path, "rb") as f:
            f.seek(blob.offset)
            data = f.read(blob.nbytes)
        assert len(data) == blob.nbytes
        return data
    return b"".join(iter_blob(LocalFileSource(path), blob))


def stored_bits(path, parsed: ParsedArchive, name: str) -> np.ndarray:
    """The tensor's elements as unsigned integers of its element size (native order), read through its
    descriptor with numpy as_strided on the storage's bytes."""
    t = next(t for t in parsed.tensors if t.name == name)
    size = ITEMSIZE[t.dtype]
    raw = np.frombuffer(blob_bytes(path, parsed.blobs[t.storage]), dtype=f"{t.byteorder}u{size}")
    if math.prod(t.shape):
        last = t.element_offset + sum((d - 1) * s for d, s in zip(t.shape, t.strides))
        assert last < raw.size, "descriptor reaches past its storage"
    view = np.lib.stride_tricks.as_strided(raw[t.element_offset:], shape=t.shape,
                                           strides=[s * size for s in t.strides], writeable=False)
    return np.ascontiguousarray(view).astype(f"=u{size}")


def torch_bits(t: torch.Tensor) -> np.ndarray:
    """A torch tensor's elements as unsigned integers of its element size."""
    t = t.detach().contiguous()
    size = t.element_size()
    signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    if t.dtype in (torch.bool, torch.uint8):
        return t.to(torch.uint8).numpy().astype(f"=u{size}")
    return t.view(signed).numpy().view(f"=u{size}")


def assert_matches_torch_load(path, parsed: ParsedArchive, expected: dict[str, torch.Tensor]):
    assert sorted(t.name for t in parsed.tensors) == sorted(expected)
    for t in parsed.tensors:
        ref = expected[t.name]
        assert t.dtype == TORCH_TO_PARAMKIT[ref.dtype], t.name
        assert t.shape == tuple(ref.shape), t.name
        np.testing.assert_array_equal(stored_bits(path, parsed, t.name), torch_bits(ref), err_msg=t.name)


# --- hand-built checkpoints ------------------------------------------------------------------------------------
class FakeStorage:
    """Pickled as torch.save's persistent id ('storage', <storage class>, key, location, numel)."""

    def __init__(self, key: str, storage_type=torch.FloatStorage, numel: int = 0):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class FakeTensor:
    """Pickled exactly as torch pickles a tensor: _rebuild_tensor_v2 (or v3 with a dtype)."""

    def __init__(self, storage, offset, size, stride, metadata=None, dtype=None):
        self.args = (storage, offset, size, stride)
        self.metadata, self.dtype = metadata, dtype

    def __reduce__(self):
        hooks = collections.OrderedDict()
        if self.dtype is not None:
            return torch._utils._rebuild_tensor_v3, self.args + (False, hooks, self.dtype)
        extra = (self.metadata,) if self.metadata is not None else ()
        return torch._utils._rebuild_tensor_v2, self.args + (False, hooks) + extra


class _CheckpointPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def checkpoint_pickle(obj, protocol=2) -> bytes:
    buf = io.BytesIO()
    _CheckpointPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def write_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def write_checkpoint(path, obj=None, storages=None, *, pkl=None, byteorder=b"little", prefix="archive",
                     compression=zipfile.ZIP_STORED) -> str:
    members = {f"{prefix}/data.pkl": checkpoint_pickle(obj) if pkl is None else pkl}
    if byteorder is not None:
        members[f"{prefix}/byteorder"] = byteorder
    for key, data in (storages or {}).items():
        members[f"{prefix}/data/{key}"] = data
    members[f"{prefix}/version"] = b"3\n"
    return write_zip(path, members, compression)


def rezip(src, dst, compression=zipfile.ZIP_STORED, transform=None) -> str:
    """Copy a zip archive member by member, optionally transforming each member's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, transform(info.filename, data) if transform else data)
    return str(dst)


def big_endian_copy(src, dst, size: int) -> str:
    """A torch.save file rewritten as a big-endian one (byteorder "big", every storage's elements of `size`
    bytes swapped): what torch.save writes on a big-endian machine."""
    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, dtype=f"<u{size}").astype(f">u{size}").tobytes()
        return data
    return rezip(src, dst, transform=to_big)


def f32_storage(key, values) -> tuple[FakeStorage, bytes]:
    arr = np.asarray(values, dtype="<f4")
    return FakeStorage(key, torch.FloatStorage, arr.size), arr.tobytes()


def code_of(excinfo) -> str:
    return excinfo.value.code


# --- real torch.save files ---------------------------------------------------------------------------------------
def all_dtype_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for dtype in TORCH_TO_PARAMKIT:
        if dtype.is_floating_point:
            base = torch.randn(3, 5, generator=g) * 4
            if dtype == torch.float8_e8m0fnu:
                base = base.abs() + 2 ** -10
            out[f"t.{str(dtype)[6:]}"] = base.to(dtype)
        elif dtype == torch.bool:
            out["t.bool"] = torch.rand(3, 5, generator=g) > 0.5
        elif dtype == torch.complex64:
            out["t.complex64"] = torch.randn(3, 5, generator=g, dtype=torch.complex64)
        else:
            info = torch.iinfo(dtype)
            lo, hi = max(info.min, -2 ** 62), min(info.max, 2 ** 62)
            out[f"t.{str(dtype)[6:]}"] = torch.randint(lo, hi, (3, 5), generator=g, dtype=torch.int64).to(dtype)
    return out


def test_every_dtype_matches_torch_load(tmp_path):
    path = tmp_path / "dtypes.pt"
    torch.save(all_dtype_tensors(), path)
    parsed = parse(path)
    assert parsed.format == "pytorch"
    assert len(parsed.tensors) == len(TORCH_TO_PARAMKIT)
    assert all(t.byteorder == "<" and t.role_hint is None and t.strides == (5, 1) for t in parsed.tensors)
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))


def test_views_slices_transposes_of_one_storage(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "base": base,
        "block": base[1:4, 2:7],
        "transposed": base.t(),
        "column": base[:, 3],
        "strided": base[::2, ::3],
        "row": base[5],
        "element": base[2, 7],
        "flat_tail": base.view(-1)[55:],
        "permuted": base.reshape(2, 3, 10).permute(2, 0, 1),
        "expanded": torch.arange(4, dtype=torch.float32).expand(3, 4),
    }
    path = tmp_path / "views.pt"
    torch.save(views, path)
    parsed = parse(path)
    by_name = {t.name: t for t in parsed.tensors}
    assert len({by_name[n].storage for n in views if n != "expanded"}) == 1
    assert by_name["block"].element_offset == 12 and by_name["block"].strides == (10, 1)
    assert by_name["transposed"].strides == (1, 10)
    assert by_name["strided"].strides == (20, 3)
    assert by_name["element"].shape == () and by_name["element"].element_offset == 27
    assert by_name["expanded"].strides == (0, 1)
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    model, opt = _trained_adam()
    path = tmp_path / f"p{protocol}.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path, pickle_protocol=protocol)
    parsed = parse(path)
    loaded = torch.load(path, weights_only=False)   # torch's own weights-only unpickler reads protocol <= 3
    assert_matches_torch_load(path, parsed, {**loaded["model"], **{
        f"optimizer.state.{pid}.{k}": v for pid, st_ in loaded["optimizer"]["state"].items() for k, v in st_.items()}})


def test_zip64_records(tmp_path):
    tensors = {"w": torch.randn(5, 6), "i": torch.arange(7)}
    path = str(tmp_path / "plain.pt")
    torch.save(tensors, path)
    z64 = str(tmp_path / "z64.pt")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(z64, "w") as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as f:
                f.write(zin.read(info))
    raw = open(z64, "rb").read()
    assert raw.count(b"\x01\x00\x10\x00") >= len(tensors)     # the zip64 extra field in local headers
    parsed = parse(z64)
    assert_matches_torch_load(z64, parsed, tensors)


def test_is_contiguous_agrees_with_torch(tmp_path):
    base = torch.arange(120, dtype=torch.float32).reshape(4, 5, 6)
    views = {"base": base, "row": base[2], "rows": base[1:3], "cols": base[:, 1:3], "t": base.transpose(0, 2),
             "step": base[::2], "single": base[:, 2:3, :], "unit": base[1:2, 3:4, 2:5], "scalar": base[1, 2, 3],
             "empty": base[:, 5:, ::2], "expand": torch.ones(1, 6).expand(3, 6), "flat_one": base.reshape(-1)[7:8]}
    path = tmp_path / "c.pt"
    torch.save(views, path)
    for t in parse(path).tensors:
        assert is_contiguous(t.shape, t.strides) == views[t.name].is_contiguous(), t.name


def test_tied_entries_share_one_descriptor(tmp_path):
    w = torch.randn(8, 4)
    path = tmp_path / "tied.pt"
    torch.save({"embed.weight": w, "lm_head.weight": w, "alias": w.view(8, 4)}, path)
    parsed = parse(path)
    descs = {(t.storage, t.element_offset, t.shape, t.strides, t.dtype) for t in parsed.tensors}
    assert len(parsed.tensors) == 3 and len(descs) == 1
    assert len(parsed.blobs) == 1
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))


def test_scalars_and_empty_tensors(tmp_path):
    base = torch.arange(20, dtype=torch.int64).reshape(4, 5)
    tensors = {"scalar": torch.tensor(3.5), "int_scalar": torch.tensor(7, dtype=torch.int64),
               "empty": torch.zeros(0, 7), "empty_cols": torch.zeros(3, 0, dtype=torch.float16),
               "empty_slice": base[2:2], "empty_1d": torch.zeros(0, dtype=torch.bool), "base": base}
    path = tmp_path / "scalars.pt"
    torch.save(tensors, path)
    parsed = parse(path)
    by_name = {t.name: t for t in parsed.tensors}
    assert by_name["scalar"].shape == () and by_name["scalar"].strides == ()
    assert by_name["empty"].shape == (0, 7)
    assert by_name["empty_slice"].shape == (0, 5) and by_name["empty_slice"].element_offset == 10
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict", "module"])
def test_single_wrapper_is_stripped_and_other_entries_go_to_metadata(tmp_path, wrapper):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    sd = model.state_dict()
    config = {"lr": 0.1, "layers": [1, 2], "name": "tiny", "betas": (0.9, 0.99), "none": None}
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: sd, "epoch": 3, "config": config, "dtype": torch.float16}, path)
    parsed = parse(path)
    assert [t.name for t in parsed.tensors] == list(sd)
    assert all(t.role_hint is None for t in parsed.tensors)
    assert json.loads(parsed.metadata["epoch"]) == 3
    assert json.loads(parsed.metadata["config"]) == {"lr": 0.1, "layers": [1, 2], "name": "tiny",
                                                     "betas": [0.9, 0.99], "none": None}
    assert json.loads(parsed.metadata["dtype"]) == "torch.float16"
    assert set(parsed.metadata) == {"epoch", "config", "dtype"}
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True)[wrapper])


def test_only_the_first_wrapper_is_stripped(tmp_path):
    path = tmp_path / "two.pt"
    a, b = torch.ones(2), torch.zeros(3)
    torch.save({"model": {"w": b}, "state_dict": {"w": a}}, path)
    parsed = parse(path)
    assert sorted(t.name for t in parsed.tensors) == ["model.w", "w"]


def test_nested_lists_tuples_and_plain_containers(tmp_path):
    t = [torch.full((2,), float(i)) for i in range(4)]
    obj = {"layers": [t[0], {"inner": t[1]}], "pair": (t[2], "label"), 7: t[3], "meta": {"k": [1, 2.5, True]}}
    path = tmp_path / "nested.pt"
    torch.save(obj, path)
    parsed = parse(path)
    assert sorted(x.name for x in parsed.tensors) == ["7", "layers.0", "layers.1.inner", "pair.0"]
    assert parsed.metadata == {"pair.1": '"label"', "meta": '{"k": [1, 2.5, true]}'}
    expected = {"7": t[3], "layers.0": t[0], "layers.1.inner": t[1], "pair.0": t[2]}
    assert_matches_torch_load(path, parsed, expected)


def test_lone_tensor_and_top_level_list(tmp_path):
    p1, p2 = tmp_path / "lone.pt", tmp_path / "list.pt"
    torch.save(torch.arange(5, dtype=torch.int32), p1)
    torch.save([torch.ones(1), torch.zeros(2)], p2)
    assert [t.name for t in parse(p1).tensors] == ["tensor"]
    assert [t.name for t in parse(p2).tensors] == ["0", "1"]


def _trained_adam():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt


def test_training_checkpoint_optimizer_tensors_have_their_role(tmp_path):
    model, opt = _trained_adam()
    osd = opt.state_dict()
    path = tmp_path / "train.ckpt"
    torch.save({"model": model.state_dict(), "optimizer": osd, "epoch": 5, "lr_scheduler": {"last_epoch": 4}},
               path)
    parsed = parse(path)
    model_names = list(model.state_dict())
    opt_names = [f"optimizer.state.{pid}.{k}" for pid, st_ in osd["state"].items() for k in st_]
    assert [t.name for t in parsed.tensors] == model_names + opt_names
    assert {t.name for t in parsed.tensors if t.role_hint == "optimizer"} == set(opt_names)
    assert all(t.role_hint is None for t in parsed.tensors if t.name in model_names)
    assert json.loads(parsed.metadata["optimizer.param_groups"]) == json.loads(json.dumps(osd["param_groups"]))
    assert json.loads(parsed.metadata["epoch"]) == 5
    assert json.loads(parsed.metadata["lr_scheduler"]) == {"last_epoch": 4}
    loaded = torch.load(path, weights_only=True)
    expected = dict(loaded["model"])
    expected.update({f"optimizer.state.{pid}.{k}": v for pid, st_ in loaded["optimizer"]["state"].items()
                     for k, v in st_.items()})
    assert_matches_torch_load(path, parsed, expected)


def test_bare_optimizer_state_dict(tmp_path):
    _, opt = _trained_adam()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    parsed = parse(path)
    assert parsed.tensors and all(t.role_hint == "optimizer" for t in parsed.tensors)
    assert parsed.tensors[0].name == "state.0.step"
    assert set(parsed.metadata) == {"param_groups"}


def test_parameters_and_tensors_with_python_attributes(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    x = torch.randn(4)
    x.note = "attribute"          # pickled through torch._tensor._rebuild_from_type_v2
    path = tmp_path / "params.pt"
    torch.save({"p": p, "x": x}, path)
    parsed = parse(path)
    assert_matches_torch_load(path, parsed, {"p": p, "x": x})


def test_minilm_through_torch_save_equals_safetensors(tmp_path, minilm_path):
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file
    path = tmp_path / "minilm.bin"
    torch.save(load_file(minilm_path), path)
    parsed = parse(path)
    reference = load_numpy(minilm_path)
    assert len(parsed.tensors) == 104 == len(reference)
    counts = collections.Counter()
    for t in parsed.tensors:
        ref = reference[t.name]
        assert t.shape == ref.shape
        counts[t.dtype] += math.prod(t.shape)
        size = ref.dtype.itemsize
        np.testing.assert_array_equal(stored_bits(path, parsed, t.name), ref.view(f"=u{size}"), err_msg=t.name)
    assert counts == {"F32": 22_713_216, "I64": 512}


# --- byte order and compression ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.int32), (torch.bfloat16, torch.float16, torch.int16),
                                    (torch.float64, torch.int64), (torch.uint8, torch.bool)])
def test_big_endian_checkpoint(tmp_path, dtypes):
    g = torch.Generator().manual_seed(2)
    tensors = {f"w{i}": (torch.randn(4, 3, generator=g) * 100).to(dt) for i, dt in enumerate(dtypes)}
    tensors["view"] = tensors["w0"].t()
    size = tensors["w0"].element_size()
    little = str(tmp_path / "little.pt")
    torch.save(tensors, little)

    big = big_endian_copy(little, tmp_path / "big.pt", size)
    loaded = torch.load(big, weights_only=True)      # torch swaps a big-endian file's bytes on load
    for k, v in tensors.items():
        np.testing.assert_array_equal(torch_bits(loaded[k]), torch_bits(v))
    parsed = parse(big)
    assert {t.byteorder for t in parsed.tensors} == {">"}
    assert_matches_torch_load(big, parsed, loaded)


def test_byteorder_record_must_be_little_or_big(tmp_path):
    s, data = f32_storage("0", [1.0])
    path = write_checkpoint(tmp_path / "bo.pt", {"w": FakeTensor(s, 0, (1,), (1,))}, {"0": data},
                            byteorder=b"middle")
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "byteorder_invalid"
    absent = write_checkpoint(tmp_path / "nobo.pt", {"w": FakeTensor(s, 0, (1,), (1,))}, {"0": data},
                              byteorder=None)
    assert parse(absent).tensors[0].byteorder == "<"


def test_deflated_checkpoint(tmp_path):
    tensors = all_dtype_tensors()
    tensors["slice"] = tensors["t.float32"][1:, 2:]
    path = str(tmp_path / "plain.pt")
    torch.save(tensors, path)
    deflated = rezip(path, tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)
    parsed = parse(deflated)
    assert {b.compression for b in parsed.blobs.values()} == {"deflate"}
    assert_matches_torch_load(deflated, parsed, torch.load(path, weights_only=True))


def test_iter_blob_bounds_its_pieces_and_checks_size_and_crc(tmp_path):
    data = np.random.default_rng(0).integers(0, 4, 200_000, dtype=np.uint8).tobytes()
    path = write_zip(tmp_path / "d.zip", {"m": data}, zipfile.ZIP_DEFLATED)
    src = LocalFileSource(path)
    blob = read_zip_members(src)["m"]
    assert blob.compression == "deflate" and blob.compressed_size < len(data) // 2
    pieces = list(iter_blob(src, blob, chunk=4096))
    assert max(len(p) for p in pieces) <= 4096 and b"".join(pieces) == data
    from dataclasses import replace
    with pytest.raises(FormatError) as e:
        list(iter_blob(src, replace(blob, crc32=blob.crc32 ^ 1)))
    assert code_of(e) == "blob_corrupt" and "CRC" in str(e.value)
    for wrong in (len(data) - 1, len(data) + 1):
        with pytest.raises(FormatError) as e:
            list(iter_blob(src, replace(blob, nbytes=wrong)))
        assert code_of(e) == "blob_corrupt"
    with pytest.raises(FormatError) as e:   # the deflate stream cut short
        list(iter_blob(src, replace(blob, compressed_size=blob.compressed_size - 10)))
    assert code_of(e) == "blob_corrupt"
    bomb = write_zip(tmp_path / "bomb.zip", {"m": bytes(20_000_000)}, zipfile.ZIP_DEFLATED)
    bomb_blob = replace(read_zip_members(LocalFileSource(bomb))["m"], nbytes=1000)
    yielded = 0
    with pytest.raises(FormatError) as e:             # a member inflating past its declared size stops there
        for piece in iter_blob(LocalFileSource(bomb), bomb_blob, chunk=256):
            yielded += len(piece)
    assert code_of(e) == "blob_corrupt" and yielded <= 1000
    raw = bytearray(open(path, "rb").read())
    raw[blob.offset + 100: blob.offset + 140] = b"\xff" * 40
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError) as e:
        list(iter_blob(LocalFileSource(bad), blob))
    assert code_of(e) == "blob_corrupt"


# --- unsupported formats -----------------------------------------------------------------------------------
def test_legacy_torch_save_is_unsupported_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "unsupported_format" and "legacy PyTorch" in str(e.value)
    assert "torch.save" in str(e.value)


def test_torchscript_archive_is_unsupported_format(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "unsupported_format" and "TorchScript" in str(e.value)


def test_legacy_ggml_file_is_unsupported_format(tmp_path):
    path = tmp_path / "ggml-model.bin"
    path.write_bytes(b"tjgg" + bytes(60))     # llama.cpp's pre-GGUF magic 'ggjt', little-endian
    with pytest.raises(FormatError) as e:
        parse(str(path))
    assert code_of(e) == "unsupported_format" and "GGML" in str(e.value)


@pytest.mark.parametrize("head,name,expected", [
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "model.h5", "HDF5 (Keras .h5)"),
    (b"\x08\x07\x12\x07pytorch\x1a\x052.1.0" + bytes(50), "model.bin", "ONNX"),
    (b"\x08\x07\x00\x00", "model.onnx", "ONNX"),
    (b"\x00" * 32, "model.ckpt.data-00000-of-00001", "TensorFlow checkpoint"),
    (b"\x00" * 32, "model.ckpt.index", "TensorFlow checkpoint"),
    (b"\x08\x01", "saved_model.pb", "TensorFlow SavedModel / GraphDef protobuf"),
    (b"\x1c\x00\x00\x00TFL3" + bytes(20), "m.tflite", "TensorFlow Lite flatbuffer"),
    (b"\x80\x04\x95", "model.pkl", "Python pickle (not a torch.save zip archive)"),
    (b"\x1f\x8b\x08\x00", "weights.bin", "gzip-compressed file"),
    (bytes(257) + b"ustar\x0000" + bytes(100), "weights.tar", "tar archive"),
    (b"tjgg\x01\x00\x00\x00", "model.bin", "GGML (legacy llama.cpp)"),
])
def test_identify_unsupported(head, name, expected):
    assert known_magics.identify_unsupported(head, name) == expected
    assert expected in known_magics.ADVICE


@pytest.mark.parametrize("head,name", [
    (b"PK\x03\x04", "model.bin"), (b"\x93NUMPY\x01\x00", "a.npy"), (b"{\"a\": 1}", "config.json"),
    (b"\x08\x07\x12\x07py\x00orch", "model.bin"),        # not a printable producer name: not ONNX
    (struct.pack("<Q", 0x1200) + b'{"w": {}}', "model.safetensors"),
])
def test_identify_unsupported_leaves_other_files_alone(head, name):
    assert known_magics.identify_unsupported(head, name) is None


def test_keras3_zip_is_unsupported_and_npz_is_not_a_checkpoint(tmp_path):
    keras = write_zip(tmp_path / "m.keras", {"metadata.json": b"{}", "config.json": b"{}",
                                             "model.weights.h5": b"\x89HDF\r\n\x1a\n"})
    with pytest.raises(FormatError) as e:
        parse(keras)
    assert code_of(e) == "unsupported_format" and "Keras 3" in str(e.value)
    npz = tmp_path / "a.npz"
    np.savez(npz, a=np.ones(2))
    with pytest.raises(FormatError) as e:
        parse(npz)
    assert code_of(e) == "unknown_format" and ".npz" in str(e.value)


def test_non_zip_unknown_file(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "unknown_format"


# --- the allowlist tables against torch ------------------------------------------------------------------
def test_dtype_tables_cover_torch():
    torch_dtypes = {str(v)[len("torch."):]: v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    assert set(torch_dtypes) == set(torch_pickle.TORCH_DTYPES)
    for name, paramkit_name in torch_pickle.TORCH_DTYPES.items():
        if paramkit_name is not None:
            assert TORCH_TO_PARAMKIT[torch_dtypes[name]] == paramkit_name
    assert set(TORCH_TO_PARAMKIT.values()) == {v for v in torch_pickle.TORCH_DTYPES.values() if v}
    for dtype, storage_name in torch.storage._dtype_to_storage_type_map().items():
        assert torch_pickle.STORAGE_DTYPES[storage_name] == str(dtype)[len("torch."):]


def test_torch_is_never_imported(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"model": {"w": torch.ones(3)}, "optimizer": {"state": {}, "param_groups": []}}, path)
    code = (
        "import os, sys\n"
        "sys.modules['torch'] = None\n"       # any import of torch now fails
        "from paramkit.formats.torch_zip import parse_torch\n"
        "class Src:\n"
        "    def __init__(self, p): self.p, self.name, self.size = p, p, os.path.getsize(p)\n"
        "    def read_at(self, o, n):\n"
        "        with open(self.p, 'rb') as f: f.seek(o); return f.read(n)\n"
        "print([t.name for t in parse_torch(Src(sys.argv[1])).tensors])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['w']"


# --- malformed archives ------------------------------------------------------------------------------------
def test_hand_built_checkpoint_is_what_torch_loads(tmp_path):
    """The test's own writer produces files torch.load reads: the malformed variants below differ from a
    valid file only in the field each one breaks."""
    s, data = f32_storage("0", np.arange(12))
    path = write_checkpoint(tmp_path / "ok.pt", {"w": FakeTensor(s, 2, (2, 3), (4, 1))}, {"0": data})
    loaded = torch.load(path, weights_only=True)
    parsed = parse(path)
    assert_matches_torch_load(path, parsed, loaded)
    np.testing.assert_array_equal(loaded["w"].numpy(), [[2, 3, 4], [6, 7, 8]])


@pytest.mark.parametrize("offset,size,stride,code", [
    (0, (3, 4), (4, 1), None),            # exactly fills the 12-element storage
    (1, (3, 4), (4, 1), "tensor_out_of_bounds"),
    (0, (3, 5), (4, 1), "tensor_out_of_bounds"),
    (11, (), (), None),                   # the last element as a scalar
    (12, (), (), "tensor_out_of_bounds"),
    (0, (12, 12), (0, 1), None),          # expanded (stride 0)
    (0, (2, 2), (13, 1), "tensor_out_of_bounds"),
    (12, (0, 3), (3, 1), None),           # empty at the very end
    (13, (0, 3), (3, 1), "tensor_out_of_bounds"),
    (-1, (2,), (1,), "tensor_layout_invalid"),
    (0, (2,), (-1,), "tensor_layout_invalid"),
    (0, (2, 3), (1,), "tensor_layout_invalid"),
    (0, (-2,), (1,), "tensor_layout_invalid"),
    (0, (2.0,), (1,), "tensor_layout_invalid"),
])
def test_tensor_extent_against_storage(tmp_path, offset, size, stride, code):
    s, data = f32_storage("0", np.arange(12))
    path = write_checkpoint(tmp_path / "t.pt", {"w": FakeTensor(s, offset, size, stride)}, {"0": data})
    if code is None:
        parsed = parse(path)
        assert parsed.tensors[0].shape == size and parsed.tensors[0].element_offset == offset
        assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))
    else:
        with pytest.raises(FormatError) as e:
            parse(path)
        assert code_of(e) == code and e.value.tensor == "w"


def test_storage_errors(tmp_path):
    s, data = f32_storage("0", np.arange(4))
    cases = {
        "storage_missing": ({"w": FakeTensor(s, 0, (4,), (1,))}, {}),
        "storage_size_mismatch": ({"w": FakeTensor(s, 0, (4,), (1,))}, {"0": data + b"\0\0\0\0"}),
        "storage_conflict": ({"w": FakeTensor(s, 0, (4,), (1,)),
                              "v": FakeTensor(FakeStorage("0", torch.FloatStorage, 3), 0, (3,), (1,))}, {"0": data}),
        "dtype_unsupported": ({"w": FakeTensor(FakeStorage("0", torch.ComplexDoubleStorage, 1), 0, (1,), (1,))},
                              {"0": bytes(16)}),
        "tensor_view_unsupported": ({"w": FakeTensor(s, 0, (4,), (1,), metadata={"neg": True})}, {"0": data}),
        "tensor_name_duplicate": ({"a.b": FakeTensor(s, 0, (4,), (1,)), "a": {"b": FakeTensor(s, 0, (4,), (1,))}},
                                  {"0": data}),
    }
    for code, (obj, storages) in cases.items():
        path = write_checkpoint(tmp_path / f"{code}.pt", obj, storages)
        with pytest.raises(FormatError) as e:
            parse(path)
        assert code_of(e) == code, code
        assert e.value.tensor is not None and e.value.path == str(path)


def test_rebuild_tensor_v3_and_untyped_storage(tmp_path):
    raw = np.arange(6, dtype="<u2").tobytes()
    s = FakeStorage("0", torch.storage.UntypedStorage, len(raw))
    path = write_checkpoint(tmp_path / "v3.pt", {"w": FakeTensor(s, 1, (2, 2), (2, 1), dtype=torch.uint16)},
                            {"0": raw})
    parsed = parse(path)
    assert parsed.tensors[0].dtype == "U16"
    assert_matches_torch_load(path, parsed, torch.load(path, weights_only=True))
    bad = write_checkpoint(tmp_path / "v3bad.pt", {"w": FakeTensor(s, 3, (2, 2), (2, 1), dtype=torch.uint16)},
                           {"0": raw})
    with pytest.raises(FormatError) as e:
        parse(bad)
    assert code_of(e) == "tensor_out_of_bounds"


def test_metadata_names_collide(tmp_path):
    s, data = f32_storage("0", [1.0])
    path = write_checkpoint(tmp_path / "c.pt", {"state_dict": {"w": FakeTensor(s, 0, (1,), (1,)), "epoch": 1},
                                                "epoch": 2}, {"0": data})
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "tensor_name_duplicate" and e.value.tensor == "epoch"


def test_containers_cycles_depth_and_bombs(tmp_path):
    s, data = f32_storage("0", [1.0])
    deep = FakeTensor(s, 0, (1,), (1,))
    for _ in range(100):
        deep = [deep]
    cyclic = [1]
    cyclic.append(cyclic)
    bomb = ["x"]
    for _ in range(40):
        bomb = [bomb, bomb]
    for i, obj in enumerate(({"deep": deep}, {"w": FakeTensor(s, 0, (1,), (1,)), "c": cyclic},
                             {"w": FakeTensor(s, 0, (1,), (1,)), "b": bomb})):
        path = write_checkpoint(tmp_path / f"c{i}.pt", obj, {"0": data})
        with pytest.raises(FormatError) as e:
            parse(path)
        assert code_of(e) == "checkpoint_invalid"


def test_very_deep_nesting_is_checkpoint_invalid(tmp_path):
    depth = 100_000                                   # MARK x N then LIST x N: lists nested N deep
    path = write_checkpoint(tmp_path / "deep.pt", pkl=b"\x80\x02" + b"(" * depth + b"l" * depth + b".")
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "checkpoint_invalid" and "nested deeper" in str(e.value)


def _cd_entries(raw: bytes) -> list[int]:
    """Offsets of the central-directory entries of a zip archive."""
    start = struct.unpack_from("<I", raw, raw.rindex(b"PK\x05\x06") + 16)[0]
    out = []
    pos = start
    while raw[pos:pos + 4] == b"PK\x01\x02":
        out.append(pos)
        n, m, k = struct.unpack_from("<3H", raw, pos + 28)
        pos += 46 + n + m + k
    return out


def test_zip_structure_errors(tmp_path):
    s, data = f32_storage("0", np.arange(4))
    good = open(write_checkpoint(tmp_path / "g.pt", {"w": FakeTensor(s, 0, (4,), (1,))}, {"0": data}),
                "rb").read()
    cd = _cd_entries(good)        # data.pkl, byteorder, data/0, version
    assert parse_torch(BytesSource(good)).tensors[0].name == "w"

    def patched(*fields):
        """Central-directory fields (entry, field offset, struct format, value) overwritten."""
        raw = bytearray(good)
        for entry, offset, fmt, value in fields:
            struct.pack_into(fmt, raw, cd[entry] + offset, value)
        return bytes(raw)

    pkl_size = struct.unpack_from("<I", good, cd[0] + 20)[0]
    local0 = struct.unpack_from("<I", good, cd[0] + 42)[0]
    renamed = bytearray(good)
    renamed[local0 + 30] ^= 0x20                           # the local header names another member
    variants = {
        "overlap": patched((0, 20, "<I", pkl_size + 40), (0, 24, "<I", pkl_size + 40)),
        "local header outside": patched((1, 42, "<I", len(good) + 10)),
        "data past the directory": patched((3, 20, "<I", 10 ** 6), (3, 24, "<I", 10 ** 6)),
        "stored sizes differ": patched((2, 24, "<I", 17)),
        "encrypted": patched((0, 8, "<H", 1)),
        "bzip2": patched((0, 10, "<H", 12)),
        "inflation ratio": patched((0, 10, "<H", 8), (0, 24, "<I", 10 ** 9)),
        "name mismatch": bytes(renamed),
        "truncated": good[:-30],
        "not a zip at all": b"PK\x03\x04" + bytes(100),
    }
    for what, raw in variants.items():
        with pytest.raises(FormatError) as e:
            parse_torch(BytesSource(raw, what))
        assert code_of(e) == "zip_invalid", (what, e.value)
    with pytest.raises(FormatError) as e:                  # stored bytes declared deflated: a bad stream
        parse_torch(BytesSource(patched((0, 10, "<H", 8))))
    assert code_of(e) == "blob_corrupt"


def test_duplicate_member_names(tmp_path):
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", checkpoint_pickle({}))
            z.writestr("archive/data.pkl", checkpoint_pickle({}))
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "zip_invalid" and "twice" in str(e.value)


def test_crc_of_data_pkl_is_checked(tmp_path):
    path = write_checkpoint(tmp_path / "crc.pt", {"epoch": 1})
    raw = bytearray(open(path, "rb").read())
    info = zipfile.ZipFile(path).getinfo("archive/data.pkl")
    local = info.header_offset
    n, m = struct.unpack_from("<2H", raw, local + 26)
    raw[local + 30 + n + m + 3] ^= 0x01
    with pytest.raises(FormatError) as e:
        parse_torch(BytesSource(bytes(raw)))
    assert code_of(e) == "blob_corrupt"


# --- malicious pickles -------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: str) -> dict[str, bytes]:
    import functools
    cmd = f"touch {marker}"
    out = {
        "os.system": pickle.dumps(_Payload(os.system, cmd), protocol=2),
        "os.system/proto4": pickle.dumps(_Payload(os.system, cmd), protocol=4),
        "builtins.eval": pickle.dumps(_Payload(eval, f"open({marker!r}, 'w')"), protocol=2),
        "builtins.exec": pickle.dumps(_Payload(exec, f"open({marker!r}, 'w')"), protocol=3),
        "subprocess.Popen": pickle.dumps(_Payload(subprocess.Popen, ["touch", marker]), protocol=2),
        "subprocess.run": pickle.dumps(_Payload(subprocess.run, ["touch", marker]), protocol=2),
        "functools.partial": pickle.dumps(_Payload(functools.partial(os.system, cmd)), protocol=2),
        # INST opcode: instantiate os.system with the marked arguments (text protocol 0)
        "INST": b"(V" + cmd.encode() + b"\nios\nsystem\n.",
        # a tensor-looking checkpoint whose value is a call of os.system inside the state dict
        "nested": pickle.dumps({"w": [1, {"x": _Payload(os.system, cmd)}]}, protocol=2),
    }
    return out


def _run_for_real(payload: bytes) -> None:
    """Control: the payload does run when the standard unpickler loads it (in a child process)."""
    code = ("import pickle, sys\n"
            "value = pickle.loads(sys.stdin.buffer.read())\n"
            "getattr(value, 'wait', lambda: None)()\n")   # a Popen payload: wait for its child
    subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, timeout=60)


@pytest.mark.parametrize("kind", list(_payloads("/x")))
def test_malicious_pickle_never_runs(tmp_path, kind):
    marker = str(tmp_path / "pwned")
    payload = _payloads(marker)[kind]
    _run_for_real(payload)
    assert os.path.exists(marker), "the control payload should create the file"
    os.remove(marker)

    with pytest.raises(FormatError) as e:
        torch_pickle.load(payload, "data.pkl")
    assert code_of(e) == "unsafe_pickle"
    path = write_checkpoint(tmp_path / "evil.pt", pkl=payload)
    with pytest.raises(FormatError) as e:
        parse(path)
    assert code_of(e) == "unsafe_pickle"
    named = kind.split("/")[0]
    if named in ("os.system", "nested"):
        assert "posix.system" in str(e.value) or "nt.system" in str(e.value)
    elif named == "INST":
        assert "INST of os.system" in str(e.value)
    else:
        assert named in str(e.value)
    assert not os.path.exists(marker)


def test_pickled_module_and_numpy_scalar_are_unsafe(tmp_path):
    for name, obj, global_name in [("module", torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
                                   ("numpy", {"x": np.float64(1.5)}, "multiarray.scalar")]:
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        with pytest.raises(FormatError) as e:
            parse(path)
        assert code_of(e) == "unsafe_pickle" and global_name in str(e.value)


@pytest.mark.parametrize("pkl,why", [
    (b"\x80\x02ctorch\nFloatStorage\n)R.", "calls torch.FloatStorage"),
    (b"\x80\x02ctorch\nfloat32\n}b.", "BUILD"),
    (b"\x80\x03C\x03abcq\x00.", "bytes value"),
    (b"\x80\x04\x8f\x94.", "EMPTY_SET"),
    (b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v2\n"
     b"ctorch\nfloat32\n)}tR.", "not torch.Tensor"),
    (b"\x80\x02ccollections\nCounter\n)R.", "collections.Counter"),
])
def test_inert_but_disallowed_pickles_are_unsafe(pkl, why):
    with pytest.raises(FormatError) as e:
        root = torch_pickle.load(pkl, "data.pkl")
        from paramkit.formats.torch_zip import _flatten
        _flatten(root, BytesSource(b""), 1000)
    assert code_of(e) == "unsafe_pickle" and why in str(e.value)


@pytest.mark.parametrize("pkl", [
    b"", b"\x80\x02", b"\x80\x02}", b"\x80\x02}q\x00(X\x05\x00\x00\x00ab", b"\x80\x09N.", b"\x80\x02h\x05.",
    b"\x80\x02.", b"\x80\x02(N.", b"\x80\x02Na.", b"\x80\x02]]s.", b"\x80\x02}]]s.", b"\x80\x02\xff.",
    b"\x80\x02U\x01a.", b"\x80\x02L" + b"9" * 5000 + b"L\n.", b"\x80\x02\x8b\xff\xff\xff\xff.",
    b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", b"\x80\x02)Q.",
])
def test_malformed_pickles_are_pickle_invalid(pkl):
    with pytest.raises(FormatError) as e:
        torch_pickle.load(pkl, "data.pkl")
    assert code_of(e) == "pickle_invalid"


def test_pickle_machine_builds_what_pickle_builds():
    """Plain values come out of the allowlist machine as pickle.loads builds them, every protocol."""
    value = {"a": [1, -2, 2 ** 40, -2 ** 70, 1.5, float("inf"), True, False, None, "é\u20ac", ()],
             "t": (1, (2, (3,))), 5: {"nested": [[], {}]}, "big": list(range(300)), "s": "x" * 300}
    for protocol in range(0, 6):
        data = pickle.dumps(value, protocol=protocol)
        assert torch_pickle.load(data) == pickle.loads(data), protocol
    shared = [1, 2]
    data = pickle.dumps({"x": shared, "y": shared}, protocol=2)
    loaded = torch_pickle.load(data)
    assert loaded["x"] is loaded["y"]


# --- fuzzing -----------------------------------------------------------------------------------------------
def _small_checkpoint() -> bytes:
    buf = io.BytesIO()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"model": {"w": base, "t": base.t(), "b": torch.ones(2, dtype=torch.bfloat16)},
                "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1}]},
                "epoch": 3}, buf)
    return buf.getvalue()


SMALL = _small_checkpoint()
SMALL_PKL = zipfile.ZipFile(io.BytesIO(SMALL)).read(
    next(n for n in zipfile.ZipFile(io.BytesIO(SMALL)).namelist() if n.endswith("/data.pkl")))


def _check_parsed(parsed: ParsedArchive, size: int) -> None:
    """Whatever parses describes only bytes inside the file and inside each tensor's storage."""
    for blob in parsed.blobs.values():
        stored = blob.compressed_size if blob.compression == "deflate" else blob.nbytes
        assert 0 <= blob.offset and blob.offset + stored <= size
    for t in parsed.tensors:
        blob = parsed.blobs[t.storage]
        n = math.prod(t.shape)
        last = t.element_offset + sum((d - 1) * s for d, s in zip(t.shape, t.strides)) + 1 if n else t.element_offset
        assert last * ITEMSIZE[t.dtype] <= blob.nbytes


def _mutate(data: bytes, edits, cut) -> bytes:
    raw = bytearray(data)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    return bytes(raw[:len(raw) - cut])


def parse_or_none(parser, data: bytes) -> ParsedArchive | None:
    """parser(BytesSource(data)), or None when it raises FormatError; any other exception fails the test."""
    try:
        return parser(BytesSource(data))
    except FormatError:
        return None


edits_strategy = st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits_strategy, cut=st.integers(0, 64) | st.just(0))
def test_fuzz_checkpoint_bytes(edits, cut):
    data = _mutate(SMALL, edits, cut)
    parsed = parse_or_none(parse_torch, data)
    if parsed is not None:
        _check_parsed(parsed, len(data))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits_strategy, cut=st.integers(0, 40) | st.just(0))
def test_fuzz_data_pkl(edits, cut):
    pkl = _mutate(SMALL_PKL, edits, cut)
    with zipfile.ZipFile(io.BytesIO(SMALL)) as zin:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else zin.read(info))
    data = out.getvalue()
    parsed = parse_or_none(parse_torch, data)
    if parsed is not None:
        _check_parsed(parsed, len(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_pickle_machine_random_bytes(data):
    try:
        torch_pickle.load(b"\x80\x02" + data)
    except FormatError:
        pass


def test_deflated_fuzz_member_bytes():
    """Corrupting the compressed bytes of deflated storages fails with blob_corrupt when read, never
    anything else; the descriptors themselves come from the (intact) data.pkl."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(SMALL)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    good = out.getvalue()
    src = BytesSource(good)
    parsed = parse_torch(src)
    rng = np.random.default_rng(5)
    for blob in parsed.blobs.values():
        for _ in range(20):
            raw = bytearray(good)
            pos = blob.offset + int(rng.integers(0, blob.compressed_size))
            raw[pos] ^= int(rng.integers(1, 256))
            try:
                assert len(b"".join(iter_blob(BytesSource(bytes(raw)), blob, chunk=3))) == blob.nbytes
            except FormatError as e:
                assert e.code == "blob_corrupt"
    assert zlib.crc32(b"".join(iter_blob(src, next(iter(parsed.blobs.values()))))) == \
        next(iter(parsed.blobs.values())).crc32
