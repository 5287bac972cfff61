#!/usr/bin/env bash
# Seed corpus for build-fuzz/bin/fuzz_packed_loader: small valid .dfssm.safetensors files.
#
#   tests/fuzz/make_seeds.sh [OUT_DIR]      (default: build-fuzz/seeds, not tracked by git)
#
# Two sources:
#  * a stdlib-only Python writer that follows docs/format.md (always): tiny geometries covering
#    every quant format and the layout switches (tied/untied, int8/fp16 embedding, f16/f32 small
#    tensors, dense projections, conv bias, ngroups > 1, unpadded vocab);
#  * the real exporter, when a LibTorch build's dfssm binary exists (build/bin/dfssm or $DFSSM):
#    `dfssm init --geometry test` -> `dfssm quantize` -> `dfssm export`.
# It also writes OUT_DIR/../packed_loader.dict (libFuzzer -dict=) with the format's JSON keys and
# tensor names. The committed seeds in tests/fuzz/corpus/ are this script's Python output.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/build-fuzz/seeds}"
mkdir -p "$OUT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

"$PY" - "$OUT" <<'EOF'
import json, os, random, struct, sys

out = sys.argv[1]

def row_bytes(cols, bits):
    return (cols * bits + 63) // 64 * 8

def f16(vals):
    return b"".join(struct.pack("<e", v) for v in vals)

def f32(vals):
    return b"".join(struct.pack("<f", v) for v in vals)

def codes(rng, rows, cols, fmt):
    bits = {"binary": 1, "binary_lowrank": 1, "ternary": 2, "int4": 4}[fmt]
    rb = row_bytes(cols, bits)
    blob = bytearray()
    for _ in range(rows):
        row = bytearray(rb)  # pad bits stay 0
        for c in range(cols):
            if bits == 1:
                field = rng.getrandbits(1)
            elif bits == 2:
                field = rng.choice([0b00, 0b01, 0b11])
            else:
                field = rng.randint(-7, 7) & 0xF
            bit = c * bits
            row[bit // 8] |= field << (bit % 8)
        blob += row
    return bytes(blob), [rows, rb]

def write(name, cfg, q, seed=1):
    rng = random.Random(seed)
    d, L, vocab = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"]
    s = cfg["ssm_cfg"]
    m = cfg["pad_vocab_size_multiple"] if cfg["pad_vocab_size_multiple"] > 0 else 1
    V = (vocab + m - 1) // m * m
    di = s["expand"] * d
    H = di // s["headdim"]
    GN = s["ngroups"] * s["d_state"]
    conv_dim = di + 2 * GN
    d_in_proj = 2 * di + 2 * GN + H
    K = s["d_conv"]
    fmt = q["format"]
    r = 0 if fmt == "binary" else q["rank"]
    small = f32 if q["small_dtype"] == "f32" else f16
    small_dt = "F32" if q["small_dtype"] == "f32" else "F16"
    T = []  # (name, dtype, shape, bytes), in file order

    def emb(prefix):
        if q["embedding"] == "fp16":
            T.append((prefix + ".weight", "F16", [V, d], f16([rng.gauss(0, 0.02) for _ in range(V * d)])))
        else:
            T.append((prefix + ".codes", "I8", [V, d], bytes(rng.randint(-127, 127) & 0xFF for _ in range(V * d))))
            T.append((prefix + ".scale", "F16", [V], f16([0.02 / 73] * V)))

    def proj(prefix, rows, cols, quantized):
        if not quantized:
            T.append((prefix + ".weight", "F16", [rows, cols], f16([rng.gauss(0, 0.05) for _ in range(rows * cols)])))
            return
        blob, shape = codes(rng, rows, cols, fmt)
        T.append((prefix + ".codes", "U8", shape, blob))
        if fmt in ("binary", "binary_lowrank"):
            T.append((prefix + ".field_a", "F16", [rows], f16([0.2 + 0.1 * rng.random() for _ in range(rows)])))
            T.append((prefix + ".field_b", "F16", [cols], f16([0.2 + 0.1 * rng.random() for _ in range(cols)])))
        elif fmt == "ternary":
            n = rows if q["ternary_scale"] == "per_row" else 1
            T.append((prefix + ".scale", "F16", [n], f16([0.05] * n)))
        else:
            g = q["int4_group"]
            n = rows * ((cols + g - 1) // g)
            T.append((prefix + ".scale", "F16", [rows, (cols + g - 1) // g], f16([0.01] * n)))
        if r > 0:
            T.append((prefix + ".lr_u", "I8", [rows, r], bytes(rng.randint(-127, 127) & 0xFF for _ in range(rows * r))))
            T.append((prefix + ".lr_u_scale", "F16", [r], f16([0.001] * r)))
            T.append((prefix + ".lr_v", "I8", [cols, r], bytes(rng.randint(-127, 127) & 0xFF for _ in range(cols * r))))
            T.append((prefix + ".lr_v_scale", "F16", [r], f16([0.001] * r)))

    emb("backbone.embedding")
    for i in range(L):
        l = "backbone.layers.%d." % i
        mx = l + "mixer."
        T.append((l + "norm.weight", small_dt, [d], small([1.0] * d)))
        proj(mx + "in_proj", d_in_proj, d, q["quantize_in_proj"])
        T.append((mx + "conv1d.weight", small_dt, [conv_dim, 1, K], small([rng.uniform(-0.5, 0.5) for _ in range(conv_dim * K)])))
        if s["conv_bias"]:
            T.append((mx + "conv1d.bias", small_dt, [conv_dim], small([rng.uniform(-0.5, 0.5) for _ in range(conv_dim)])))
        T.append((mx + "dt_bias", "F32", [H], f32([rng.uniform(-6, -2) for _ in range(H)])))
        T.append((mx + "A_log", "F32", [H], f32([rng.uniform(0, 2.7) for _ in range(H)])))
        T.append((mx + "D", "F32", [H], f32([1.0] * H)))
        T.append((mx + "norm.weight", small_dt, [di], small([1.0] * di)))
        proj(mx + "out_proj", d, di, q["quantize_out_proj"])
    T.append(("backbone.norm_f.weight", small_dt, [d], small([1.0] * d)))
    if not cfg["tie_embeddings"]:
        emb("lm_head")

    meta = {"format": "dfssm-packed", "format_version": "1",
            "config": json.dumps(cfg, indent=2) + "\n", "quant": json.dumps(q, indent=2),
            "tokenizer_sha256": "", "provenance": json.dumps({"teacher_sha256": "", "tokens_seen": 0, "steps": 0,
                                                                "dfssm_git": "make_seeds.sh"})}
    header = {"__metadata__": meta}
    pos = 0
    for n, dt, shape, data in T:
        header[n] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    path = os.path.join(out, name + ".dfssm.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in T))
    print("wrote %s (%d bytes, %d tensors)" % (path, os.path.getsize(path), len(T)))

def config(d_model, n_layer, vocab, d_state, headdim, **kw):
    ssm = {"layer": "Mamba2", "d_state": d_state, "d_conv": kw.get("d_conv", 4), "expand": 2, "headdim": headdim,
           "ngroups": kw.get("ngroups", 1), "chunk_size": 16, "conv_bias": kw.get("conv_bias", True),
           "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4, "A_init_range": [1.0, 16.0]}
    return {"d_model": d_model, "d_intermediate": 0, "n_layer": n_layer, "vocab_size": vocab, "ssm_cfg": ssm,
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "norm_epsilon": 1e-5, "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": kw.get("pad", 16),
            "tie_embeddings": kw.get("tie", True)}

def quant(fmt, rank, **kw):
    q = {"format": fmt, "rank": rank, "ste_clip": 1.0, "ternary_scale": "per_row", "int4_group": 128,
         "quantize_in_proj": True, "quantize_out_proj": True, "embedding": "int8", "small_dtype": "f16",
         "svid_iters": 30, "svd_oversample": 8, "svd_power_iters": 2}
    q.update(kw)
    return q

# The "test" geometry (d_model 64, 2 layers, vocab 100 -> 112), binary_lowrank rank 2.
write("test_binary_lowrank_r2", config(64, 2, 100, 16, 16), quant("binary_lowrank", 2))
# Tiny ones (d_model 16, 1 layer): the header is a large share of the bytes, so mutations hit it.
write("tiny_binary", config(16, 1, 20, 4, 8), quant("binary", 0), seed=2)
write("tiny_binary_lowrank_untied_fp16emb", config(16, 1, 20, 4, 8, tie=False, conv_bias=False),
      quant("binary_lowrank", 1, embedding="fp16"), seed=3)
write("tiny_ternary_pertensor_f32", config(16, 1, 21, 4, 8, pad=1), quant("ternary", 1, ternary_scale="per_tensor",
      small_dtype="f32"), seed=4)
write("tiny_int4_g8_ngroups2_dense_out", config(16, 1, 20, 4, 8, ngroups=2),
      quant("int4", 0, int4_group=8, quantize_out_proj=False), seed=5)
write("tiny_ternary_perrow_2layers_k2", config(16, 2, 20, 4, 8, d_conv=2), quant("ternary", 0), seed=6)
EOF

# The real exporter, when a LibTorch build is there.
DFSSM_BIN="${DFSSM:-$ROOT/build/bin/dfssm}"
if [ -x "$DFSSM_BIN" ] && "$DFSSM_BIN" --help 2>&1 | grep -q export; then
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$DFSSM_BIN" init -o "$TMP/teacher" --geometry test >/dev/null
  for spec in "binary_lowrank:format=binary_lowrank rank=2" "binary:format=binary" "int4:format=int4 int4_group=32"; do
    name="${spec%%:*}"
    # shellcheck disable=SC2086
    "$DFSSM_BIN" quantize "$TMP/teacher" -o "$TMP/student_$name" ${spec#*:} >/dev/null
    "$DFSSM_BIN" export "$TMP/student_$name" -o "$OUT/export_test_$name.dfssm.safetensors" >/dev/null
    echo "wrote $OUT/export_test_$name.dfssm.safetensors (dfssm export)"
  done
else
  echo "($DFSSM_BIN not found: no exporter seeds; the Python seeds follow docs/format.md)"
fi

# libFuzzer dictionary: the strings a valid header is made of.
DICT="$(dirname "$OUT")/packed_loader.dict"
{
  for w in __metadata__ format format_version config quant dtype shape data_offsets dfssm-packed \
           d_model n_layer vocab_size ssm_cfg layer Mamba2 d_state headdim ngroups expand d_conv chunk_size \
           conv_bias pad_vocab_size_multiple tie_embeddings norm_epsilon residual_in_fp32 d_intermediate \
           attn_layer_idx rms_norm dt_limit A_init_range d_ssm hidden_size model_type mamba2 \
           rank ternary_scale int4_group quantize_in_proj quantize_out_proj embedding small_dtype ste_clip \
           binary binary_lowrank ternary int4 per_row per_tensor int8 fp16 f16 f32 \
           F16 F32 I8 U8 BF16 F64 I32 I64 BOOL \
           backbone.embedding.codes backbone.embedding.scale backbone.embedding.weight backbone.norm_f.weight \
           lm_head.codes lm_head.scale lm_head.weight backbone.layers.0. mixer.in_proj mixer.out_proj \
           .codes .field_a .field_b .scale .lr_u .lr_u_scale .lr_v .lr_v_scale .weight conv1d.weight \
           conv1d.bias dt_bias A_log norm.weight; do
    printf '"\\"%s\\""\n' "$w"
  done
  printf '"%s"\n' true false null 0 1 -1 18446744073709551615 9223372036854775807 4294967296 1e308 -0 '[]' '{}'
} >"$DICT"
echo "wrote $DICT"
