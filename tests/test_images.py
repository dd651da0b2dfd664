from PIL import Image
import pytest

from react.errors import ReactError
from react.images import load_rgb, to_rgb


def test_transparency_becomes_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_corrupt_and_missing_images_are_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ReactError, match="broken.png"):
        load_rgb(bad)
    with pytest.raises(ReactError, match="image not found: .*missing.jpg"):
        load_rgb(tmp_path / "missing.jpg")
