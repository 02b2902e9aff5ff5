"""Names a person reads: MLflow run names and the console's trial labels."""

import re

from conftest import TESTS

from raykd.search.naming import search_run_name, trial_label, trial_number
from raykd.spaces import load_space


def test_trial_numbers_are_the_searchers_count():
    assert trial_number("c1cdf752", "3_feature/lambda=18.6") == 3
    assert trial_number("c1cdf752", "12_method=mtpd,mtpd/order=big>gfl") == 12
    assert trial_number("c1cdf752_00002") == 3  # Tune's own counter, from 0
    assert trial_number("c1cdf752") == "c1cdf752"  # nothing to count by: the id


def test_label_shows_the_method_and_its_searched_values():
    feature = load_space(TESTS / "data" / "console_space.yaml")
    assert trial_label(feature, {"feature/lambda": 18.6342}) == "feature λ=18.6"
    orders = load_space(TESTS / "data" / "tiny_space.yaml")
    assert trial_label(orders, {"method": "mtpd", "mtpd/order": "gfl>big"}) == "mtpd order=gfl>big"


def test_search_name_is_the_space_and_its_start():
    space = load_space(TESTS / "data" / "console_space.yaml")
    assert re.fullmatch(r"search console_space \d{4}-\d\d-\d\d \d\d:\d\d", search_run_name(space))
