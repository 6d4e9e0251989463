"""The progress bar's postfix stays readable for suites of many SAEs."""

from saescope.training.progress import _postfix


def test_few_saes_are_listed_many_are_summarised_as_ranges():
    few = {str(i): {"l0": 8.0 + i, "fvu": 0.1, "dead_fraction": 0.0} for i in range(2)}
    assert _postfix(4096, 2000, few) == "tok=4.10k L0=8.0/9.0 FVU=0.100/0.100 dead%=0.0/0.0 2.00ktok/s"
    many = {str(i): {"l0": 8.0 + i, "fvu": 0.1 * (i + 1), "dead_fraction": 0.01 * i} for i in range(12)}
    text = _postfix(4096, 2000, many)
    assert text.startswith("12 SAEs ") and "L0=8.0–19.0" in text and "FVU=0.100–1.200" in text and "dead%=0.0–11.0" in text
