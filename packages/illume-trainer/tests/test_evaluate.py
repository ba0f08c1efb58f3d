from illume_eval.shapes import Scene, ShapeObject
from illume_trainer.evaluate import object_errors


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
        "objects": 10, "right": 6, "shape": 2, "colour": 2, "missing": 1, "extra": 1,
    }  # fmt: skip
