"""AIPP: feed the vision OM the resized, cropped uint8 image and let the chip normalise it.

atc's ``--insert_op_conf`` takes a static AIPP config; with ``input_format : RGB888_U8`` the OM's input
becomes uint8 [B, H, W, 3] (4× fewer bytes per ``.npy`` than float32 [B, 3, H, W]) and each channel is
computed as ``(x − mean_chn_i − min_chn_i) × var_reci_chn_i`` in fp16. With ``mean_chn_i = 0``,
``min_chn_i = 255·mean_i`` and ``var_reci_chn_i = 1 / (255·std_i)`` that is open_clip's
``(x / 255 − mean) / std``, up to rounding — which ``emulate`` reproduces on the CPU, so the cost of
AIPP is measured (recall and cosine against the float path) before anyone reaches an NPU.

uint8 arrays need no second pass over the images: step 1's float pixels come from a 256-entry table per
channel, so ``to_uint8`` inverts them exactly.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import KitError, write_text


def aipp_config(mean, std, height, width):
    """The static AIPP config (atc ``--insert_op_conf``) that normalises RGB uint8 with ``mean``/``std``."""
    lines = ["aipp_op {", "    aipp_mode : static", "    input_format : RGB888_U8",
             f"    src_image_size_w : {width}", f"    src_image_size_h : {height}",
             "    csc_switch : false", "    rbuv_swap_switch : false"]
    lines += [f"    mean_chn_{c} : 0" for c in range(3)]
    lines += [f"    min_chn_{c} : {255.0 * float(m):.6f}" for c, m in enumerate(mean)]
    lines += [f"    var_reci_chn_{c} : {1.0 / (255.0 * float(s)):.10f}" for c, s in enumerate(std)]
    return "\n".join(lines + ["}"]) + "\n"


def write_aipp_config(path, mean, std, height, width):
    write_text(path, aipp_config(mean, std, height, width))
    return Path(path)


# --- the config as atc reads it -------------------------------------------------------------------
# atc parses --insert_op_conf with protobuf's TextFormat::Parse into insert_op.proto's InsertNewOps (GE
# insert_aipp_op_util.cc), then checks each AippOpParams (aipp_op.cc ValidateParams) and that no two blocks
# name the same input. Field kinds as insert_op.proto declares them; enums by value name.
INPUT_FORMATS = ("UNDEFINED", "YUV420SP_U8", "XRGB8888_U8", "RGB888_U8", "YUV400_U8", "NC1HWC0DI_FP16", "NC1HWC0DI_S8",
                 "ARGB8888_U8", "YUYV_U8", "YUV422SP_U8", "AYUV444_U8", "RAW10", "RAW12", "RAW16", "RAW24", "RGB16",
                 "RGB20", "RGB24", "RGB8_IR", "RGB16_IR", "RGB24_IR")
AIPP_MODES = ("undefined", "static", "dynamic")
ONCE_REPEATED = ([f"var_reci_chn_{c}" for c in range(4)] + [f"matrix_r{r}c{c}" for r in range(3) for c in range(3)]
                 + [f"{kind}_bias_{c}" for kind in ("output", "input") for c in range(3)])  # repeated, atc takes one
AIPP_FIELDS = {"aipp_mode": AIPP_MODES, "related_input_rank": "uint32", "related_input_name": "string",
               "input_edge_idx": "uint32*", "max_src_image_size": "uint32", "support_rotation": "bool",
               "input_format": INPUT_FORMATS, "csc_switch": "bool", "cpadding_value": "float",
               "rbuv_swap_switch": "bool", "ax_swap_switch": "bool", "single_line_mode": "bool",
               "crop": "bool", "resize": "bool", "padding": "bool", "padding_value": "float",
               "raw_rgbir_to_f16_n": "uint32",
               **{f"{name}_{axis}": "int32" for name in ("src_image_size", "load_start_pos", "crop_size", "resize_output")
                  for axis in "wh"},
               **{f"{side}_padding_size": "int32" for side in ("left", "right", "top", "bottom")},
               **{f"mean_chn_{c}": "int32" for c in range(4)}, **{f"min_chn_{c}": "float" for c in range(4)},
               **{name: ("float*" if name.startswith("var_reci") else "int32*") for name in ONCE_REPEATED}}
MULTI_SHAPE_FIELDS = {"mode": ("batch", "resolution"), "related_input_rank": "uint32", "batch_list": "uint32*"}
MESSAGES = {"InsertNewOps": {"aipp_op": "AippOpParams*", "multi_shape_op": "MultiShapeOpParams*"},
            "AippOpParams": AIPP_FIELDS, "MultiShapeOpParams": MULTI_SHAPE_FIELDS}
NOT_NEGATIVE = ("src_image_size_w", "src_image_size_h", "load_start_pos_w", "load_start_pos_h", "crop_size_w",
                "resize_output_w", "resize_output_h", "left_padding_size", "right_padding_size", "top_padding_size",
                "bottom_padding_size")  # aipp_op.cc's list, crop_size_h not in it
INTEGER_RANGES = {"int32": (-2 ** 31, 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1)}
TOKENS = re.compile(r"""(?P<space>[ \t\r\n\v\f]+)|(?P<comment>\#[^\n]*)
    |(?P<float>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?|\d+[eE][+-]?\d+[fF]?|\d+[fF])
    |(?P<integer>0[xX][0-9A-Fa-f]+|\d+)|(?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<symbol>[{}\[\]<>:;,-])""", re.X)


@dataclass
class _Token:
    kind: str
    text: str
    line: int
    column: int


class _TextFormat:
    """protobuf's text format over the message table above: ``name: value`` (the colon optional before a
    message), ``{…}`` or ``<…>`` messages, ``[a, b]`` lists for repeated fields, ``#`` comments, ``;``/``,``
    separators; a singular field given twice, an unknown field or enum value, a value of the wrong kind or
    range are errors, as in TextFormat::Parse."""

    def __init__(self, text, source):
        self.source, self.tokens, self.pos = source, [], 0
        line, line_start, pos = 1, 0, 0
        while pos < len(text):
            match = TOKENS.match(text, pos)
            if match is None:
                self._fail(line, pos - line_start + 1, f"unexpected character {text[pos]!r} (U+{ord(text[pos]):04X})")
            if match.lastgroup in ("integer", "float") and re.match(r"[A-Za-z0-9_.]", text[match.end():match.end() + 1]):
                self._fail(line, pos - line_start + 1, f"need space between number {match.group()!r} and what follows")
            if match.lastgroup not in ("space", "comment"):
                self.tokens.append(_Token(match.lastgroup, match.group(), line, pos - line_start + 1))
            newlines = match.group().count("\n")
            if newlines:
                line, line_start = line + newlines, pos + match.group().rindex("\n") + 1
            pos = match.end()

    def _fail(self, line, column, reason):
        raise KitError(f"{self.source}:{line}:{column}: {reason}; atc cannot parse this AIPP config (protobuf text "
                       "format of insert_op.proto)")

    def _error(self, token, reason):
        if token is None:
            last = self.tokens[-1] if self.tokens else _Token("", "", 1, 1)
            self._fail(last.line, last.column + len(last.text), reason)
        self._fail(token.line, token.column, reason)

    def _peek(self, text=None):
        token = self.tokens[self.pos] if self.pos < len(self.tokens) else None
        return token if text is None or (token is not None and token.text == text) else None

    def _next(self):
        token = self._peek()
        if token is None:
            self._error(None, "the file ends inside a message (a closing brace missing?)")
        self.pos += 1
        return token

    def _accept(self, *texts):
        token = self._peek()
        if token is not None and token.text in texts:
            self.pos += 1
            return token
        return None

    def _expect(self, *texts):
        token = self._accept(*texts)
        if token is None:
            found = self._peek()
            self._error(found, f"expected {' or '.join(repr(t) for t in texts)}, found "
                        f"{repr(found.text) if found else 'the end of the file'}")
        return token

    def message(self, type_name, closing=None):
        """Fields until ``closing`` (end of file at the top) → ({name: value or [values]}, {name: line})."""
        fields, values, lines = MESSAGES[type_name], {}, {}
        while not (self._accept(closing) if closing else self._peek() is None):
            token = self._next()
            if token.kind != "identifier":
                self._error(token, f"expected a field name, found {token.text!r}")
            kind = fields.get(token.text)
            if kind is None:
                self._error(token, f'message type "domi.{type_name}" has no field named "{token.text}"')
            repeated = isinstance(kind, str) and kind.endswith("*")
            kind = kind.rstrip("*") if repeated else kind
            if kind in MESSAGES:
                self._accept(":")
                items = self._list(self._message_value, kind) if self._peek("[") else [self._message_value(kind)]
            else:
                self._expect(":")
                items = self._list(self._scalar, kind) if repeated and self._peek("[") else [self._scalar(kind)]
            if repeated:
                values.setdefault(token.text, []).extend(items)
            elif token.text in values and values[token.text] != _default(kind):
                self._error(token, f'non-repeated field "{token.text}" is specified multiple times')
            else:
                values[token.text] = items[0]
            lines.setdefault(token.text, token.line)
            self._accept(";", ",")
        return values, lines

    def _message_value(self, type_name):
        opening = self._expect("{", "<")
        values, lines = self.message(type_name, "}" if opening.text == "{" else ">")
        return values, lines, opening.line

    def _list(self, item, kind):
        self._expect("[")
        items = []
        while not self._accept("]"):
            if items:
                self._expect(",")
            items.append(item(kind))
        return items

    def _scalar(self, kind):
        token = self._next()
        if isinstance(kind, tuple):  # an enum: a value name, or its number
            if token.kind == "identifier" and token.text in kind:
                return token.text
            if token.kind == "integer" and _integer(token, self) < len(kind):
                return kind[_integer(token, self)]
            self._error(token, f"unknown enumeration value {token.text!r} (one of {', '.join(kind)})")
        if kind == "string":
            if token.kind != "string":
                self._error(token, f"expected a quoted string, found {token.text!r}")
            text = token.text[1:-1]
            while self._peek() is not None and self._peek().kind == "string":  # adjacent strings concatenate
                text += self._next().text[1:-1]
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)
        if kind == "bool":
            if token.text in ("true", "True", "t", "1"):
                return True
            if token.text in ("false", "False", "f", "0"):
                return False
            self._error(token, f"expected true or false, found {token.text!r}")
        negative = token.text == "-"
        if negative:
            token = self._next()
        if kind == "float":
            if token.kind in ("float", "integer") or token.text.lower() in ("inf", "infinity", "nan"):
                value = float(_integer(token, self) if token.kind == "integer" else token.text.rstrip("fF"))
                return float(np.float32(-value if negative else value))  # a proto float is 32-bit
            self._error(token, f"expected a number, found {token.text!r}")
        if token.kind != "integer":
            self._error(token, f"expected an integer, found {('-' if negative else '') + token.text!r}")
        value = -_integer(token, self) if negative else _integer(token, self)
        low, high = INTEGER_RANGES[kind]
        if not low <= value <= high:
            self._error(token, f"integer {value} out of range for {kind}")
        return value


def _integer(token, parser):
    """A protobuf integer literal: decimal, 0x hex, or octal after a leading zero."""
    text = token.text
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if len(text) > 1 and text.startswith("0"):
        if not set(text) <= set("01234567"):
            parser._error(token, f"numbers starting with a leading zero must be octal, found {text!r}")
        return int(text, 8)
    return int(text)


def _default(kind):
    """A proto3 field's default: set to it, a singular field counts as unset (TextFormat's HasField)."""
    return {"bool": False, "string": "", "float": 0.0}.get(kind, 0) if isinstance(kind, str) else kind[0]


def _check_blocks(blocks, source):
    """atc's checks after parsing (aipp_op.cc ValidateParams, insert_aipp_op_util.cc CheckPositionNotRepeat)."""
    def refuse(line, reason):
        raise KitError(f"{source}:{line}: aipp_op {reason}; atc refuses this AIPP config")

    for values, lines, line in blocks:
        mode = values.get("aipp_mode", "undefined")
        if mode not in ("static", "dynamic"):
            refuse(lines.get("aipp_mode", line), "needs aipp_mode static or dynamic")
        for name in ONCE_REPEATED:
            if len(values.get(name, [])) > 1:
                refuse(lines[name], f"gives {name} {len(values[name])} times; it may be configured once")
        if mode == "dynamic" and values.get("max_src_image_size", 0) <= 0:
            refuse(line, "is dynamic but max_src_image_size is not above 0")
        if mode == "static" and values.get("input_format", "UNDEFINED") == "UNDEFINED":
            refuse(line, "is static but sets no input_format")
        for name in NOT_NEGATIVE:
            if mode == "static" and values.get(name, 0) < 0:
                refuse(lines[name], f"sets {name} below 0")
    named = [bool(values.get("related_input_name")) for values, _, _ in blocks]
    if len(blocks) > 1 and any(named) != all(named):
        refuse(blocks[named.index(not named[0])][2], "mixes related_input_name and related_input_rank across blocks")
    key = "related_input_name" if named and named[0] else "related_input_rank"
    seen = {}
    for values, _, line in blocks:
        target = values.get(key, 0)
        if target in seen:
            refuse(line, f"names the same input as the block on line {seen[target]} ({key} {target!r})")
        seen[target] = line


def parse_aipp_config(text, source="AIPP config"):
    """The ``aipp_op`` blocks of an AIPP config as atc reads them, in file order: {field: value} with enums
    by name, bools as bools, min/var values as 32-bit floats, the once-only repeated fields (var_reci_chn_i,
    matrix_*, *_bias_i) as their one value, and ``related_input_rank`` always present (0 unless given), so a
    caller can tell which block applies to which model input (block_for_input). Anything atc rejects is a
    one-line KitError naming ``source`` and the line."""
    values, _ = _TextFormat(text, source).message("InsertNewOps")
    blocks = values.get("aipp_op", [])
    _check_blocks(blocks, source)
    out = []
    for fields, _, _ in blocks:
        block = {name: (value[0] if name in ONCE_REPEATED else value) for name, value in fields.items()}
        block.setdefault("related_input_rank", 0)
        out.append(block)
    return out


def block_for_input(blocks, rank=0):
    """The block of ``parse_aipp_config`` that atc applies to model input ``rank`` (None if there is none)."""
    return next((block for block in blocks if "related_input_name" not in block and block["related_input_rank"] == rank),
                None)


UNEMULATED = ("csc_switch", "rbuv_swap_switch", "ax_swap_switch", "single_line_mode", "crop", "resize", "padding")


def emulate(images_u8, config):
    """AIPP's normalisation of uint8 [B, H, W, 3] as the chip computes it (each step stored in fp16)
    → float32 [B, 3, H, W]. ``config``: one block of ``parse_aipp_config``; only an RGB888_U8 block that
    normalises (no colour conversion, swap, crop, resize or padding) at the images' size is emulated."""
    images_u8 = np.asarray(images_u8)
    switched = [name for name in UNEMULATED if config.get(name)]
    if config.get("input_format") != "RGB888_U8" or switched:
        raise KitError(f"AIPP emulation covers RGB888_U8 normalisation only, not input_format "
                       f"{config.get('input_format')} with {', '.join(switched) or 'no switch'} on")
    size = (config.get("src_image_size_h", 0), config.get("src_image_size_w", 0))
    if all(size) and tuple(images_u8.shape[1:3]) != size:
        raise KitError(f"images of {images_u8.shape[1]}×{images_u8.shape[2]} (H×W) for an AIPP config whose source "
                       f"is {size[0]}×{size[1]}")
    pixels = images_u8.astype(np.float16).transpose(0, 3, 1, 2)
    out = np.empty(pixels.shape, dtype=np.float16)
    for c in range(3):
        shifted = (pixels[:, c] - np.float16(config.get(f"mean_chn_{c}", 0))).astype(np.float16)
        shifted = (shifted - np.float16(config.get(f"min_chn_{c}", 0))).astype(np.float16)
        out[:, c] = (shifted * np.float16(config.get(f"var_reci_chn_{c}", 1))).astype(np.float16)
    return out.astype(np.float32)


def to_uint8(pixels, mean, std):
    """Step 1's float32 [B, 3, H, W] back to the uint8 [B, H, W, 3] it was made from (exact: each channel's
    256 values are distinct); a value no uint8 maps to is a one-line error."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255)
    out = np.empty((pixels.shape[0],) + pixels.shape[2:] + (3,), dtype=np.uint8)
    for c, (m, s) in enumerate(zip(mean, std)):
        table = (scaled - np.float32(m)) / np.float32(s)
        order = np.argsort(table)
        index = np.clip(np.searchsorted(table[order], pixels[:, c]), 0, 255)
        candidates = order[index]
        if not np.array_equal(table[candidates], pixels[:, c]):
            raise KitError("these arrays were not made by step 1 with this model's mean/std; re-run openclip_preprocess.py")
        out[..., c] = candidates
    return out


def prepare_uint8(prep):
    """For an AIPP OM: ``prep/images_u8/{stem}.npy`` (uint8 [1, H, W, 3]) beside each step-1 array, and
    ``prep/aipp.cfg`` with the manifest's mean, std and size; returns the config's path."""
    from tqdm import tqdm

    from ..data.dataset import Manifest
    from ..files import save_npy

    prep = Path(prep)
    manifest_path = prep / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path}: not found; run step 1 (openclip_preprocess.py) first")
    config = Manifest.load(manifest_path).preprocess
    mean, std, (height, width) = config["mean"], config["std"], config["size"]
    for path in tqdm(sorted((prep / "images").glob("*.npy")), desc="uint8 images", unit="img"):
        target = prep / "images_u8" / path.name
        if not target.is_file():
            save_npy(target, to_uint8(np.load(path), mean, std))
    return write_aipp_config(prep / "aipp.cfg", mean, std, height, width)


