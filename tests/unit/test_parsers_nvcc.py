"""nvcc --version parser (tests/fixtures/corpus/nvcc_--version_12.8_and_13.0.txt)."""
from provisioners.parsers import nvcc
from tests.fixtures.corpus.samples import sample


def test_nvcc_12_8():
    v = nvcc.parse_version(sample("nvcc_--version_12.8_and_13.0.txt", "a"))
    assert v == nvcc.NvccVersion(release="12.8", major=12, minor=8, build="V12.8.93")
    assert v.as_tuple == (12, 8)


def test_nvcc_13_0():
    v = nvcc.parse_version(sample("nvcc_--version_12.8_and_13.0.txt", "b"))
    assert (v.release, v.build) == ("13.0", "V13.0.88")


def test_nvcc_missing():
    assert nvcc.parse_version("bash: nvcc: command not found\n") is None
