"""Reference decodings for the image loader: what OpenCV makes of PNG and JPEG variants.

Run once by hand from the repository root:
    "$(scripts/pyenv.sh)" tests/reference/image_io.py

The face path follows OpenCV (`cv2.imread(path, cv2.IMREAD_COLOR)`, then BGR -> RGB), so every
file here is decoded that way and the result saved beside it. PNGs are written by the small
encoder below (every colour type and bit depth, tRNS, Adam7 interlacing, an eXIf orientation,
all five row filters), so that 16-bit, grey+alpha and palette files exist at all; JPEGs by
OpenCV (grey, progressive, 4:4:4, restart markers) and Pillow (CMYK, EXIF orientation).

Outputs, written to tests/data/image_io/:
  <case>.png / <case>.jpg   the input file
  <case>.npy                cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1], uint8 (H, W, 3)
  cases.json                per case: file, width, height, what it exercises; library versions
"""

import io
import json
import os
import struct
import zlib

import cv2
import numpy as np
import PIL
import skimage.data
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "image_io")
WIDTH, HEIGHT = 23, 14  # odd width: rows of sub-byte samples end mid-byte

rng = np.random.default_rng(20240607)


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def pack_row(samples, bit_depth):
    """One scanline of unsigned samples as PNG stores them (big-endian, MSB-first bits)."""
    if bit_depth == 16:
        return samples.astype(">u2").tobytes()
    if bit_depth == 8:
        return samples.astype(np.uint8).tobytes()
    per_byte = 8 // bit_depth
    padded = np.zeros(-(-len(samples) // per_byte) * per_byte, dtype=np.uint8)
    padded[: len(samples)] = samples
    out = np.zeros(len(padded) // per_byte, dtype=np.uint8)
    for i in range(per_byte):
        out |= padded[i::per_byte] << (8 - bit_depth * (i + 1))
    return out.tobytes()


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def filter_rows(rows, bpp):
    """Filters each row with type (row index % 5), so that all five filters are exercised."""
    out = b""
    prev = bytes(len(rows[0])) if rows else b""
    for y, row in enumerate(rows):
        kind = y % 5
        f = bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
            f.append((x - pred) & 0xFF)
        out += bytes([kind]) + bytes(f)
        prev = row
    return out


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_bytes(samples, colour_type, bit_depth, extra=(), interlace=False, palette=None):
    """samples: (H, W, C) unsigned ints. extra: (kind, data) chunks placed before IDAT."""
    h, w, c = samples.shape
    bpp = max(1, c * bit_depth // 8)

    def rows_of(img):
        return [pack_row(img[y].reshape(-1), bit_depth) for y in range(img.shape[0])]

    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.size:
                raw += filter_rows(rows_of(sub), bpp)
    else:
        raw = filter_rows(rows_of(samples), bpp)
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, int(interlace)))
    if palette is not None:
        out += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    for kind, data in extra:
        out += chunk(kind, data)
    out += chunk(b"IDAT", zlib.compress(raw, 9))
    out += chunk(b"IEND", b"")
    return out


def exif_orientation(value):
    """A little-endian TIFF header with one IFD entry: Orientation (0x0112) = value."""
    return b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + struct.pack("<I", 0)


def photo(w, h):
    """A crop of scikit-image's astronaut, resized: smooth areas and edges, like a face photo."""
    full = skimage.data.astronaut()[16:240, 113:337]
    return cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)


def png_cases():
    u16 = lambda c: rng.integers(0, 65536, size=(HEIGHT, WIDTH, c), dtype=np.uint32)
    u8 = lambda c: rng.integers(0, 256, size=(HEIGHT, WIDTH, c), dtype=np.uint32)
    palette = rng.integers(0, 256, size=(16, 3))
    grey_trns = u8(1)
    grey_trns[::3, ::2] = 77
    yield "png_grey1", "grey, 1 bit", png_bytes(rng.integers(0, 2, size=(HEIGHT, WIDTH, 1)), 0, 1)
    yield "png_grey2", "grey, 2 bits", png_bytes(rng.integers(0, 4, size=(HEIGHT, WIDTH, 1)), 0, 2)
    yield "png_grey4", "grey, 4 bits", png_bytes(rng.integers(0, 16, size=(HEIGHT, WIDTH, 1)), 0, 4)
    yield "png_grey8", "grey, 8 bits", png_bytes(u8(1), 0, 8)
    yield "png_grey8_trns", "grey, 8 bits, tRNS", png_bytes(grey_trns, 0, 8, [(b"tRNS", struct.pack(">H", 77))])
    yield "png_grey16", "grey, 16 bits", png_bytes(u16(1), 0, 16)
    yield "png_greyalpha8", "grey + alpha, 8 bits", png_bytes(u8(2), 4, 8)
    yield "png_greyalpha16", "grey + alpha, 16 bits", png_bytes(u16(2), 4, 16)
    yield "png_rgb8", "RGB, 8 bits", png_bytes(u8(3), 2, 8)
    yield "png_rgb16", "RGB, 16 bits", png_bytes(u16(3), 2, 16)
    yield "png_rgba8", "RGBA, 8 bits", png_bytes(u8(4), 6, 8)
    yield "png_rgba16", "RGBA, 16 bits", png_bytes(u16(4), 6, 16)
    yield "png_palette4", "palette, 4 bits", png_bytes(
        rng.integers(0, 16, size=(HEIGHT, WIDTH, 1)), 3, 4, palette=palette
    )
    yield "png_palette8_trns", "palette, 8 bits, tRNS", png_bytes(
        rng.integers(0, 16, size=(HEIGHT, WIDTH, 1)),
        3,
        8,
        [(b"tRNS", rng.integers(0, 256, size=10).astype(np.uint8).tobytes())],
        palette=palette,
    )
    yield "png_rgb8_adam7", "RGB, 8 bits, Adam7 interlaced", png_bytes(u8(3), 2, 8, interlace=True)
    yield "png_rgb16_adam7", "RGB, 16 bits, Adam7 interlaced", png_bytes(u16(3), 2, 16, interlace=True)
    yield "png_exif6", "RGB, 8 bits, eXIf orientation 6", png_bytes(
        photo(WIDTH, HEIGHT).astype(np.uint32), 2, 8, [(b"eXIf", exif_orientation(6))]
    )


def jpeg_cases():
    rgb = photo(48, 32)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])

    def cv_jpeg(img, params):
        ok, data = cv2.imencode(".jpg", img, params)
        assert ok
        return data.tobytes()

    yield "jpeg_grey", "grey, baseline", cv_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), [cv2.IMWRITE_JPEG_QUALITY, 90])
    yield "jpeg_420", "YCbCr 4:2:0, baseline", cv_jpeg(bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    yield "jpeg_444", "YCbCr 4:4:4, baseline", cv_jpeg(
        bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    )
    yield "jpeg_progressive", "YCbCr 4:2:0, progressive", cv_jpeg(
        bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    )
    yield "jpeg_restart", "YCbCr 4:2:0, restart marker every MCU row", cv_jpeg(
        bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 3]
    )
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=90)
    yield "jpeg_cmyk", "CMYK (Adobe, inverted), baseline", buf.getvalue()
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    yield "jpeg_exif6", "YCbCr 4:2:0, EXIF orientation 6", buf.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {
        "versions": {"opencv": cv2.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
        "decode": "cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]",
        "cases": {},
    }
    for cases, ext in [(png_cases(), "png"), (jpeg_cases(), "jpg")]:
        for name, what, data in cases:
            path = os.path.join(OUT, f"{name}.{ext}")
            with open(path, "wb") as f:
                f.write(data)
            decoded = cv2.imread(path, cv2.IMREAD_COLOR)
            assert decoded is not None, name
            rgb = np.ascontiguousarray(decoded[:, :, ::-1])
            np.save(os.path.join(OUT, f"{name}.npy"), rgb)
            meta["cases"][name] = {
                "file": f"{name}.{ext}",
                "what": what,
                "width": rgb.shape[1],
                "height": rgb.shape[0],
            }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
