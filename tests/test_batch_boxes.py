"""handfit batch --boxes: your own hand boxes per photo, searched instead of the whole photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from handfit.batch.inputs import Unit
from handfit.batch.stages import Preparer, load_boxes
from handfit.errors import UsageError
from stand_ins import StandIn


class _StubDetector(StandIn):
    """Records which search the Preparer asked for."""

    def __init__(self):
        self.calls = []

    def detect(self, rgb, mode=None):
        self.calls.append(("detect", None))
        return ["whole"]

    def detect_in_boxes(self, rgb, boxes):
        self.calls.append(("boxes", boxes))
        return ["boxed"]


def test_boxes_file_is_read_relative_to_itself_and_used_per_photo(tmp_path):
    sub = tmp_path / "photos"
    sub.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(sub / name)
    spec = tmp_path / "boxes.json"
    spec.write_text(json.dumps({"photos/a.png": [[1, 2, 10, 12], [0, 0, 5, 5, "left"]]}))
    boxes = load_boxes(spec)
    assert boxes == {str((sub / "a.png").resolve()): [(1, 2, 10, 12), (0, 0, 5, 5, "left")]}

    stub = _StubDetector()

    class Res:  # the Resources the Preparer takes its detector from
        def detector(self, mode="thorough", max_hands=None):
            return stub

    prep = Preparer(None, "fast", boxes, Res())
    got_a = prep(Unit("photo", str(sub / "a.png"), "a"))
    got_b = prep(Unit("photo", str(sub / "b.png"), "b"))
    assert got_a.detections == ["boxed"] and got_b.detections == ["whole"]
    assert stub.calls == [("boxes", [(1, 2, 10, 12), (0, 0, 5, 5, "left")]), ("detect", None)]


@pytest.mark.parametrize("content", ['{"a.png": [[1, 2, 3]]}', '{"a.png": [[1, 2, 3, 4, "up"]]}', "[1, 2]",
                                     "not json"])
def test_bad_boxes_file_is_a_usage_error(tmp_path, content):
    spec = tmp_path / "boxes.json"
    spec.write_text(content)
    with pytest.raises(UsageError, match="--boxes"):
        load_boxes(spec)
