"""Bad input is rejected on the host, where data enters, with the range it found."""

import numpy as np
import pytest

from vdm.data import validate_batch


def test_valid_integer_data_passes_as_uint8():
    x = validate_batch(np.array([[0, 16], [3, 4]], np.int64), vocab_size=17)
    assert x.dtype == np.uint8
    x = validate_batch(np.array([[0.0, 255.0]]), vocab_size=256)  # integral floats are fine
    assert x.dtype == np.uint8 and x.max() == 255


@pytest.mark.parametrize(
    "x,match",
    [
        (np.array([[0, 17]]), r"\[0, 17\) for data.vocab_size=17; found range \[0, 17\]"),
        (np.array([[-1, 3]]), r"found range \[-1, 3\]"),
        (np.array([[0.5, 3.0]]), r"non-integer values"),
        (np.array([[np.nan, 3.0]]), r"non-integer values"),
        (np.array([[True, False]]), r"got dtype bool"),
        (np.array(["a", "b"]), r"got dtype <U1"),
        (np.zeros((0, 3), np.uint8), r"non-empty batch"),
    ],
)
def test_bad_data_is_a_clear_error(x, match):
    with pytest.raises(ValueError, match=match):
        validate_batch(x, vocab_size=17)
