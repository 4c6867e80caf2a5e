"""The shared frame helpers (features/frames.py): the positional fast paths give exactly what the
hashing operations they stand in for give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.frames import duplicated_mask, join_on_id, same_ids, sorted_by_id


def _frames(order):
    left = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "x": [1.0, 2.0, 3.0, 4.0]})
    right = pd.DataFrame({"customer_id": [left["customer_id"][i] for i in order], "y": [10.0 * (i + 1) for i in order]})
    return left, right


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 1, 0, 2), (0, 1, 2)])
@pytest.mark.parametrize("how", ["inner", "left"])
def test_join_on_id_is_the_one_to_one_merge_whatever_the_order(order, how):
    left, right = _frames(order)
    expected = left.merge(right, on="customer_id", how=how, validate="one_to_one")
    pd.testing.assert_frame_equal(join_on_id(left, right, how=how), expected)
    # Each customer's y is its own whichever path ran: y = 10 * (position in left + 1).
    joined = join_on_id(left, right, how=how).dropna()
    assert (joined["y"] == 10.0 * (left.set_index("customer_id").index.get_indexer(joined["customer_id"]) + 1)).all()


def test_join_on_id_refuses_duplicates_as_the_merge_does():
    left = pd.DataFrame({"customer_id": ["a", "a"], "x": [1.0, 2.0]})
    right = pd.DataFrame({"customer_id": ["a", "a"], "y": [1.0, 2.0]})
    with pytest.raises(pd.errors.MergeError):
        join_on_id(left, right)


def test_same_ids_compares_as_text_in_order():
    assert same_ids(pd.Series(["1", "2"]), pd.Series([1, 2]))
    assert not same_ids(pd.Series(["1", "2"]), pd.Series(["2", "1"]))
    assert not same_ids(pd.Series(["1", "2"]), pd.Series(["1"]))


@pytest.mark.parametrize(
    "values",
    [["a", "b", "b", "c", "d", "d", "d"], ["b", "a", "b"], ["a", None, "a", "c"], ["a"], [], ["a", "b", "c"]],
)
def test_duplicated_mask_is_duplicated_keep_false(values):
    series = pd.Series(values, dtype="str")
    np.testing.assert_array_equal(duplicated_mask(series), series.duplicated(keep=False).to_numpy())


@pytest.mark.parametrize("ids", [["b", "a", "b", "c"], ["a", "b", "b", "c"]])
def test_sorted_by_id_is_the_stable_sort_with_a_fresh_index(ids):
    frame = pd.DataFrame({"customer_id": ids, "row": range(4)}, index=[7, 5, 3, 1])
    expected = frame.sort_values("customer_id", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(sorted_by_id(frame), expected)  # ties keep their order: rows 0 before 2
