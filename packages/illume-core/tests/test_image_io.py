import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from illume_core import ImageLimits, ImageLoadError, load_image, load_images


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


# ---------------------------------------------------------------- sources


def test_every_source_kind_gives_the_same_rgb_image(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    pil = Image.fromarray(array)
    data = _png_bytes(pil)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    sources = [
        str(path),
        path,
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        pil,
        array,
    ]
    for source in sources:
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (5, 7)
        np.testing.assert_array_equal(np.asarray(out), array)
    with open(path, "rb") as handle:
        np.testing.assert_array_equal(np.asarray(load_image(handle)), array)
    assert len(load_images([path, data])) == 2


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    image.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.size == (2, 4)
    # The blue top-left pixel ends top-right after a 90-degree clockwise turn.
    assert _pixel(out, (1, 0))[2] > 200


# ---------------------------------------------------------------- modes


def test_half_transparent_red_over_white_blends():
    image = Image.new("RGBA", (1, 1), (255, 0, 0, 128))
    r, g, b = _pixel(load_image(image))
    expected = 255 * (1 - 128 / 255)
    assert r == 255 and abs(g - expected) <= 1 and abs(b - expected) <= 1


def test_alpha_is_composited_onto_a_chosen_background():
    image = Image.new("RGBA", (1, 1), (0, 0, 255, 64))
    r, g, b = _pixel(load_image(_png_bytes(image), background=(0, 255, 0)))
    a = 64 / 255
    assert abs(r - 0) <= 1 and abs(g - 255 * (1 - a)) <= 1 and abs(b - 255 * a) <= 1


def test_la_mode_is_composited():
    image = Image.new("LA", (1, 1), (0, 0))  # fully transparent black
    assert _pixel(load_image(image)) == (255, 255, 255)
    image = Image.new("LA", (1, 1), (100, 255))
    assert _pixel(load_image(image)) == (100, 100, 100)


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # palette index 0 (red) is transparent
    out = load_image(_png_bytes(image, transparency=0), background=(10, 20, 30))
    assert _pixel(out, (0, 0)) == (10, 20, 30)
    assert _pixel(out, (1, 0)) == (0, 0, 255)


def test_plain_palette_image():
    image = Image.new("P", (1, 1))
    image.putpalette([12, 34, 56] + [0] * (255 * 3))
    assert _pixel(load_image(_png_bytes(image))) == (12, 34, 56)


def test_cmyk_is_converted():
    image = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # full magenta + yellow = red
    r, g, b = _pixel(load_image(image))
    assert r == 255 and g == 0 and b == 0
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(buf, format="JPEG", quality=95)
    assert max(_pixel(load_image(buf.getvalue()))) < 10  # full black ink


def test_greyscale_is_replicated():
    assert _pixel(load_image(Image.new("L", (1, 1), 77))) == (77, 77, 77)
    assert _pixel(load_image(np.full((2, 2), 9, dtype=np.uint8))) == (9, 9, 9)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    array = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 32896 = 128 * 257
    image = Image.fromarray(array)
    out = np.asarray(load_image(_png_bytes(image)))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    out = np.asarray(load_image(image))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_one_bit_image():
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    out = load_image(_png_bytes(image))
    assert _pixel(out, (0, 0)) == (0, 0, 0) and _pixel(out, (1, 0)) == (255, 255, 255)


def test_float_image_in_unit_range():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(load_image(image))[0, :, 0].tolist() == [0, 128, 255]


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png.*no such file"):
        load_image(tmp_path / "nope.png")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png.*empty \(0 bytes\)"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(ImageLoadError, match=r"notes\.png.*not a recognised image format"):
        load_image(path)


def test_truncated_file(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(array))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.png.*truncated or corrupt"):
        load_image(path)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(buf.getvalue()[:300])


def test_corrupt_data_after_valid_header(tmp_path):
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    data = bytearray(_png_bytes(Image.fromarray(array)))
    idat = data.find(b"IDAT")
    data[idat + 4 : idat + 20] = b"\xff" * 16  # scramble the compressed stream
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(bytes(data))


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the decompressed data never exists)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    # Over our default limit (64M pixels): our header check refuses it.
    with pytest.raises(
        ImageLoadError, match=r"100000000 pixels is over the limit.*decompression bomb"
    ):
        load_image(_bomb_png(10_000, 10_000))
    # So far over that PIL itself refuses it while reading the header: still our error type.
    with pytest.raises(ImageLoadError, match=r"<\d+ bytes>: refused as a decompression bomb"):
        load_image(_bomb_png(100_000, 100_000), limits=ImageLimits(max_pixels=10**12))


def test_pixel_limit_is_configurable():
    data = _png_bytes(Image.new("RGB", (20, 20)))
    with pytest.raises(ImageLoadError, match="400 pixels is over the limit of 399"):
        load_image(data, limits=ImageLimits(max_pixels=399))
    assert load_image(data, limits=ImageLimits(max_pixels=400)).size == (20, 20)
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(np.zeros((20, 20, 3), np.uint8), limits=ImageLimits(max_pixels=10))


def test_byte_limit_is_checked_before_reading(tmp_path):
    data = _png_bytes(Image.new("RGB", (20, 20)))
    path = tmp_path / "big.png"
    path.write_bytes(data)
    small = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageLoadError, match=rf"big\.png.*{len(data)} bytes, over the limit"):
        load_image(path, limits=small)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(io.BytesIO(data), limits=small)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(data, limits=small)


def test_bad_arrays_and_types():
    with pytest.raises(ImageLoadError, match="dtype is float32"):
        load_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ImageLoadError, match=r"shape is \(2, 2, 5\)"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageLoadError, match="unsupported source type int"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="text mode"):
        load_image(io.StringIO("x"))  # type: ignore[arg-type]


def test_load_images_raises_on_the_first_bad_one(tmp_path):
    good = _png_bytes(Image.new("RGB", (2, 2)))
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_images([good, tmp_path / "missing.png"])


def test_error_is_a_value_error_with_fields():
    with pytest.raises(ValueError) as info:
        load_image(b"junk")
    assert info.value.source == "<4 bytes>" and "not a recognised" in info.value.problem


def test_a_fifo_or_a_device_is_refused_not_read(tmp_path):
    """st_size is 0 for a FIFO and /dev/zero: a loader that trusts it hangs or fills memory."""
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)  # returns at once: opened without blocking, refused on the handle
    if os.path.exists("/dev/zero"):
        with pytest.raises(ImageLoadError, match="not a regular file"):
            load_image("/dev/zero")


def test_paths_from_data_files_stay_inside_their_folder(tmp_path):
    from illume_core import UnsafePathError, resolve_inside

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    assert resolve_inside(root, "images/a.png") == (root / "images" / "a.png").resolve()
    with pytest.raises(UnsafePathError, match="outside its data set"):
        resolve_inside(root, "../../../../etc/passwd")
    (root / "images" / "link.png").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePathError, match="outside its data set"):
        resolve_inside(root, "images/link.png")  # a symlink out is followed, and refused
    with pytest.raises(UnsafePathError, match="absolute path"):
        resolve_inside(root, "/etc/passwd")
    assert str(resolve_inside(root, "/elsewhere/x.png", allow_absolute=True)) == "/elsewhere/x.png"


def test_read_bounded_reads_at_most_its_limit(tmp_path):
    from illume_core import read_bounded

    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 1000)
    assert read_bounded(path, 1000) == b"x" * 1000
    with pytest.raises(OSError, match="over the limit of 999"):
        read_bounded(path, 999)


def test_json_configs_manifests_and_data_are_read_bounded_and_named_when_bad(tmp_path):
    """Every JSON, JSON-lines and text file the packages read goes through read_bounded: a FIFO
    named as a config, a manifest or a conversation file is refused at once (no hang), an
    oversized one is refused before it is read, bad JSON names the file and where."""
    import os

    from illume_core import Config, ConfigError, read_json, read_jsonl, read_text

    good = tmp_path / "config.json"
    good.write_text('{"a": 1}')
    assert read_json(good) == {"a": 1} and read_text(good) == '{"a": 1}'
    fifo = tmp_path / "config_fifo.json"
    os.mkfifo(fifo)
    for read in (read_json, read_jsonl, read_text):
        with pytest.raises(OSError, match="not a regular file"):
            read(fifo)
    with pytest.raises(OSError, match="over the limit of 4"):
        read_json(good, max_bytes=4)
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON \(.*line 2, column 7\)"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 3: not valid JSON"):
        read_jsonl(tmp_path / "rows.jsonl")
    with pytest.raises(ConfigError, match="not a regular file"):  # a component's config.json too
        Config.load(fifo)
