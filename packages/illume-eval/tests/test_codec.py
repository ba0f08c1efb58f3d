from illume_eval.shapes import Scene, ShapeObject
from illume_eval.shapes.codec import object_errors


def test_object_errors_match_drawings_to_the_scene_by_cell():
    scene = Scene(
        (
            ShapeObject("circle", "red", 0, 0),  # drawn right
            ShapeObject("square", "blue", 1, 1),  # drawn as a circle
            ShapeObject("triangle", "green", 2, 2),  # drawn yellow
            ShapeObject("circle", "cyan", 0, 2),  # drawn as a purple square: both wrong
            ShapeObject("square", "red", 2, 0),  # not drawn
        )
    )
    drawn = sorted(
        [
            ("circle", "red", 0, 0),
            ("circle", "blue", 1, 1),
            ("triangle", "yellow", 2, 2),
            ("square", "purple", 0, 2),
            ("circle", "green", 1, 0),  # in an empty cell
        ]
    )
    assert object_errors([drawn, scene.summary()], [scene, scene]) == {
        "objects": 10,
        "right": 6,
        "shape": 2,
        "colour": 2,
        "missing": 1,
        "extra": 1,
    }


def test_patches_round_trip_and_codes_that_name_their_patch_decode_exactly():
    import pytest
    import torch

    from illume_eval.shapes.codec import from_patches, mean_patches, to_patches

    pixels = torch.rand(2, 3, 8, 8)
    patches = to_patches(pixels, (2, 2))  # [2, 4, 3 * 4 * 4]
    assert patches.shape == (2, 4, 48)
    # the top-right patch of the first image is its pixels [:, 0:4, 4:8]
    assert torch.equal(patches[0, 1], pixels[0, :, 0:4, 4:8].reshape(-1))
    assert torch.equal(from_patches(patches, (2, 2)), pixels)
    with pytest.raises(ValueError, match="does not tile"):
        to_patches(torch.rand(1, 3, 10, 10), (3, 3))

    # Codes that tell every distinct patch apart decode back to the patches; codes shared by two
    # patches decode to their mean.
    flat = patches.flatten(0, 1)  # 8 distinct patches
    exact = mean_patches(torch.arange(8), flat, codebook_size=10)
    assert torch.equal(exact[:8], flat) and torch.equal(exact[8:], torch.zeros(2, 48))
    shared = mean_patches(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]), flat, codebook_size=7)
    assert torch.allclose(shared[0], (flat[0] + flat[1]) / 2)
