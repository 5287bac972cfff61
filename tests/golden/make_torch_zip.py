#!/usr/bin/env python3
"""torch.save archives for the C++ torch.save-zip reader test (tests/test_torch_zip.cpp).

Usage: make_torch_zip.py OUT_DIR

Valid archives (each with OUT/<stem>.names: its tensor names in state-dict order):
  pytorch_model.bin      a module's state_dict() (OrderedDict with _metadata), fp32; zip folder
                         "pytorch_model/"
  mixed.bin              every dtype the reader maps (incl. uint16 / float8 via _rebuild_tensor_v3),
                         tied tensors sharing one storage (same object, a detached alias, a row
                         slice), transposed / permuted / strided / expanded / offset views, 0-d and
                         empty tensors, an nn.Parameter, a tensor with Python attributes
                         (_rebuild_from_type_v2), and non-tensor entries that must be skipped
  mixed_p4.bin, mixed_p5.bin   the same dict with pickle protocol 4 / 5 (FRAME, MEMOIZE, ...)
  mixed_zip64_py.bin     mixed.bin re-zipped by Python's zipfile with force_zip64 (local zip64 extras)
  mixed_zip64_full.bin   mixed.bin re-zipped by a hand-written writer that puts *every* size and
                         offset in zip64 fields (central + local extras, saturated EOCD, EOCD64 +
                         locator) and pads local extras like PyTorch does
  expected.safetensors   every tensor above, contiguous, names prefixed "sd." / "mixed."
  pytorch_model.pklrange "offset size" of data.pkl inside pytorch_model.bin (for mutation tests)

Archives that must be rejected (see the test for the expected messages):
  legacy.bin, compressed.bin, no_pkl.bin, missing_storage.bin, short_storage.bin,
  garbage_pkl.bin, no_tensors.bin, not_dict.bin, too_small.bin, overflow.bin, bad_dtype.bin,
  qtensor.bin, big_endian.bin
"""
import io
import pickle
import random
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=g)


def write_names(stem, d):
    names = [k for k, v in d.items() if isinstance(v, torch.Tensor)]
    (out / f"{stem}.names").write_text("".join(n + "\n" for n in names))


# ---- valid archives ----------------------------------------------------------------------
m = torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 4), torch.nn.LayerNorm(4))
with torch.no_grad():
    for p in m.parameters():
        p.copy_(rnd(*p.shape))
sd = m.state_dict()
assert hasattr(sd, "_metadata")
torch.save(sd, out / "pytorch_model.bin")
write_names("pytorch_model", sd)

emb = rnd(8, 5)
big = rnd(20)
attr = rnd(4)
attr.note = "python attribute"  # pickled through _rebuild_from_type_v2
mixed = {
    "half": rnd(3, 4).half(),
    "bf16": rnd(7).bfloat16(),
    "f64": rnd(2, 2).double(),
    "long": torch.arange(-5, 5, dtype=torch.int64),
    "int32": torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32),
    "int16": torch.tensor([-7, 300], dtype=torch.int16),
    "int8": torch.tensor([-128, 127, 3], dtype=torch.int8),
    "uint8": torch.tensor([0, 255, 9], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "u16": torch.tensor([0, 1, 300, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3 + UntypedStorage
    "f8": rnd(6).to(torch.float8_e4m3fn),
    "emb": emb,
    "tied": emb,  # the same object: memoized
    "tied_view": emb.detach(),  # another tensor on the same storage (what state_dict gives for tied weights)
    "emb_rows": emb[2:5],  # same storage, offset 10
    "transposed": rnd(4, 6).t(),
    "permuted": rnd(2, 3, 4).permute(2, 0, 1),
    "slice": big[5:15].view(2, 5),  # storage offset 5
    "strided": big[1::3],  # stride 3, shares big's storage
    "expanded": rnd(3, 1).expand(3, 4),  # stride 0
    "empty": torch.zeros(0, 3),
    "scalar": torch.tensor(3.5),
    "param": torch.nn.Parameter(rnd(2, 3)),  # _rebuild_parameter
    "attr": attr,
    "step": 7,
    "config": {"d_model": 6, "name": "x", "nested": torch.ones(2)},
    "list": [1, 2.5, None, True, b"bytes"],
    "huge_int": 2**70,
}
torch.save(mixed, out / "mixed.bin")
write_names("mixed", mixed)
for proto in (4, 5):
    torch.save(mixed, out / f"mixed_p{proto}.bin", pickle_protocol=proto)
    write_names(f"mixed_p{proto}", mixed)

expected = {f"sd.{k}": v.detach().contiguous().clone() for k, v in sd.items()}
expected.update({f"mixed.{k}": v.detach().contiguous().clone() for k, v in mixed.items() if isinstance(v, torch.Tensor)})
save_file(expected, out / "expected.safetensors")


def entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def rezip(src, dst, transform=lambda name, data: data, compression=zipfile.ZIP_STORED, force_zip64=False):
    with zipfile.ZipFile(dst, "w", compression) as z:
        for name, data in entries(src):
            data = transform(name, data)
            if data is None:
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            with z.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)


def write_zip64_full(dst, items, align=64):
    """Every size/offset in zip64 fields; local extras padded so data is `align`-aligned."""
    buf = bytearray()
    central = bytearray()
    for name, data in items:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = len(buf)
        z64 = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        pad = (-(off + 30 + len(nb) + len(z64) + 4)) % align
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        buf += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra))
        buf += nb + extra
        assert len(buf) % align == 0
        buf += data
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(cextra),
            0, 0, 0, 0, 0xFFFFFFFF)
        central += nb + cextra
    cd_off, cd_size, n = len(buf), len(central), len(items)
    buf += central
    e64 = len(buf)
    buf += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
    buf += struct.pack("<IIQI", 0x07064B50, 0, e64, 1)
    buf += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    Path(dst).write_bytes(bytes(buf))


rezip(out / "mixed.bin", out / "mixed_zip64_py.bin", force_zip64=True)
write_zip64_full(out / "mixed_zip64_full.bin", entries(out / "mixed.bin"))
for stem in ("mixed_zip64_py", "mixed_zip64_full"):
    write_names(stem, mixed)
    with zipfile.ZipFile(out / f"{stem}.bin") as z:  # Python agrees the archives are sound
        assert z.testzip() is None
    back = torch.load(out / f"{stem}.bin", weights_only=False)
    assert all(torch.equal(back[k].view(torch.uint8), mixed[k].view(torch.uint8))
               for k in ("half", "u16", "emb_rows"))

with zipfile.ZipFile(out / "pytorch_model.bin") as z:
    info = z.getinfo("pytorch_model/data.pkl")
raw = (out / "pytorch_model.bin").read_bytes()
nlen, xlen = struct.unpack_from("<HH", raw, info.header_offset + 26)
(out / "pytorch_model.pklrange").write_text(f"{info.header_offset + 30 + nlen + xlen} {info.file_size}\n")

# ---- archives that must be rejected ---------------------------------------------------------
torch.save(sd, out / "legacy.bin", _use_new_zipfile_serialization=False)
rezip(out / "mixed.bin", out / "compressed.bin", compression=zipfile.ZIP_DEFLATED)
rezip(out / "mixed.bin", out / "no_pkl.bin", lambda n, d: None if n.endswith("data.pkl") else d)
# Storage keys are numbered in pickling order, so "half" (the first entry) owns data/0.
rezip(out / "mixed.bin", out / "missing_storage.bin", lambda n, d: None if n == "mixed/data/0" else d)
rezip(out / "mixed.bin", out / "short_storage.bin", lambda n, d: d[:-2] if n == "mixed/data/0" else d)
rnd_bytes = random.Random(5).randbytes(4000)
rezip(out / "mixed.bin", out / "garbage_pkl.bin", lambda n, d: rnd_bytes if n.endswith("data.pkl") else d)
torch.save({"a": 1, "b": "text", "c": {"d": 2.0}}, out / "no_tensors.bin")
torch.save([torch.zeros(2)], out / "not_dict.bin")


# Hand-built pickles for records torch would never write.
class Storage:
    def __init__(self, type_, key, numel):
        self.type, self.key, self.numel = type_, key, numel


class Rebuild:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def crafted(name, obj, storages, byteorder="little"):
    b = io.BytesIO()
    Pickler(b, protocol=2).dump(obj)
    items = [("crafted/data.pkl", b.getvalue()), ("crafted/byteorder", byteorder.encode())]
    items += [(f"crafted/data/{k}", v) for k, v in storages.items()]
    items.append(("crafted/version", b"3\n"))
    with zipfile.ZipFile(out / name, "w", zipfile.ZIP_STORED) as z:
        for n, d in items:
            z.writestr(n, d)


def v2(storage, offset, size, stride):
    return Rebuild(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, OrderedDict()))


fs = Storage(torch.FloatStorage, "0", 4)
four = struct.pack("<4f", 1, 2, 3, 4)
crafted("too_small.bin", {"ok": v2(fs, 0, (4,), (1,)), "w": v2(fs, 1, (2, 2), (2, 1))}, {"0": four})
crafted("overflow.bin", {"w": v2(fs, 0, (3,), (2**62,))}, {"0": four})
crafted("bad_dtype.bin", {"w": Rebuild(torch._utils._rebuild_tensor_v3, (
    Storage(torch.UntypedStorage, "0", 16), 0, (2,), (1,), False, OrderedDict(), torch.complex64))}, {"0": four})
crafted("qtensor.bin", {"ok": v2(fs, 0, (4,), (1,)), "w": Rebuild(torch._utils._rebuild_qtensor, (1, 2))}, {"0": four})
crafted("big_endian.bin", {"w": v2(fs, 0, (4,), (1,))}, {"0": four}, byteorder="big")
