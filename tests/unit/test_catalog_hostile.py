"""Hostile and odd catalog files, as a user could hand them to ``validate``/``plan``/``apply``/``destroy``:
each gives one line per problem with the YAML line (where there is one) and exit 1, never a
traceback. Inputs are built from ``good.yml`` in ``tmp_path`` (one defect each)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from provisioners import redact as redaction
from provisioners.catalog import CatalogError, load_catalog
from provisioners.catalog.yamlpos import MAX_DEPTH, MAX_EXPANDED_NODES
from provisioners.commands import validate

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "fixtures" / "catalogs" / "good.yml"


@pytest.fixture(autouse=True)
def _clean_secrets():
    redaction._clear_for_tests()
    yield
    redaction._clear_for_tests()


def _variant(tmp_path: Path, old: str, new: str, name: str = "cat.yml") -> Path:
    text = GOOD.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    (tmp_path / "keys").symlink_to(GOOD.parent / "keys")
    return path


def _issues(path: Path) -> list[str]:
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    return str(info.value).splitlines()


def test_recursive_alias_is_one_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("version: 1\nloop: &a [*a]\n")
    assert _issues(path) == [f"{path}:2:7: an alias refers to the collection that contains it (a recursive anchor) "
                             "(expected aliases to earlier, complete values; fix: remove the alias (*name) from "
                             "inside its own anchor (&name))"]


@pytest.mark.parametrize("text, line", [
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", 1),                                   # flow style
    ("".join("  " * i + f"k{i}:\n" for i in range(700)) + "  " * 700 + "x\n", MAX_DEPTH + 1),  # block style
])
def test_very_deep_nesting_is_refused_at_its_line(tmp_path, text, line):
    path = tmp_path / "c.yml"
    path.write_text(text)
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:{line}:") and f"nests more than {MAX_DEPTH} levels" in issue


def test_alias_bomb_is_refused_before_expanding(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for n, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[n]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = tmp_path / "c.yml"
    path.write_text("\n".join(lines) + "\n")
    [issue] = _issues(path)
    assert f"aliases expand this value to more than {MAX_EXPANDED_NODES} YAML nodes" in issue
    assert issue.startswith(f"{path}:5:")  # e: 10**5 nodes, the first over the limit


def test_aliases_and_merge_keys_of_normal_size_still_work(tmp_path):
    path = _variant(tmp_path, "  dns: [192.168.0.1]", "  dns: &dns [192.168.0.1]\n  extra_dns: *dns")
    [issue] = _issues(path)
    assert "extra_dns: unknown key" in issue  # parsed normally; only the unknown key is reported


@pytest.mark.parametrize("encode, needle, line", [
    (lambda t: t.replace("NVIDIA GeForce", "NVIDIA G\u00e9Force").encode("latin-1"), "byte 0xe9 is not UTF-8 text", 52),
    (lambda t: t.encode() + bytes(range(128, 256)), "byte 0x80 is not UTF-8 text", 77),
])
def test_non_utf8_names_the_line_of_the_first_bad_byte(tmp_path, encode, needle, line):
    path = tmp_path / "c.yml"
    path.write_bytes(encode(GOOD.read_text()))
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:{line}:") and needle in issue and "codec" not in issue


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b"])
def test_control_characters_name_their_line(tmp_path, char):
    path = _variant(tmp_path, "  node: pve", f"  node: p{char}ve")
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:7:10: character U+{ord(char):04X} is not allowed in YAML")


def test_unreadable_catalog_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "c.yml"
    path.write_text(GOOD.read_text())

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # chmod 000 does not stop root, who runs CI
    assert _issues(path) == [f"{path}: cannot read the catalog: permission denied "
                             "(fix: make it readable by this user (chmod/chown))"]


def test_endless_file_is_refused_without_reading_it_all():
    with pytest.raises(CatalogError) as info:
        load_catalog("/dev/zero")
    assert str(info.value) == ("/dev/zero: is larger than 1 MiB; not a catalog (expected a YAML catalog of a few KiB; "
                               "fix: check the path)")


@pytest.mark.parametrize("old, new, words", [
    ("cores: 32", "cores: 99999999999999999999999999999999999", "vms[0].cores: 99999999999999999999999999999999999 "
                                                                 "is out of range: must be less than or equal to 4096"),
    ("timeout_s: 60", "timeout_s: 100000000000000000000", "proxmox.timeout_s: 100000000000000000000 is out of range"),
    ("start_timeout_s: 600", "start_timeout_s: 86401", "proxmox.start_timeout_s: 86401 is out of range"),
    ("ready_timeout_s: 1800", "ready_timeout_s: 1e30", "vms[0].stack.vllm.ready_timeout_s"),
])
def test_huge_numbers_are_out_of_range(tmp_path, old, new, words):
    [issue] = _issues(_variant(tmp_path, old, new))
    assert words in issue


def test_uppercase_pci_address_is_accepted_in_pves_lowercase(tmp_path):
    cat = load_catalog(_variant(tmp_path, 'address: "0000:01:00"', 'address: "0000:0A:00"'))
    assert cat.vms[0].gpu.address == "0000:0a:00"


def test_windows_line_endings_and_bom_are_fine(tmp_path):
    text = GOOD.read_text().replace("\n", "\r\n")
    path = tmp_path / "c.yml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "keys").symlink_to(GOOD.parent / "keys")
    assert load_catalog(path).vms[0].vmid == 140


def _validate(path: Path) -> int:
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    return validate.run(parser.parse_args([str(path)]))


def test_validate_prints_the_structural_issues_and_exits_1(tmp_path, capsys):
    path = tmp_path / "c.yml"
    path.write_text("a: &a [*a]\n")
    assert _validate(path) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "recursive anchor" in err


HOSTILE = {
    "recursive.yml": b"a: &a [*a]\n",
    "deep.yml": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "binary.yml": bytes(range(256)) * 4,
    "nul.yml": b"version: 1\x00\n",
    "list.yml": b"- a\n- b\n",
    "empty.yml": b"",
}


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "destroy"])
def test_cli_never_shows_a_traceback_for_hostile_catalogs(tmp_path, command):
    for name, data in HOSTILE.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "adir").mkdir()
    for name in [*HOSTILE, "adir", "missing.yml"]:
        proc = subprocess.run([sys.executable, "-m", "provisioners", command, str(tmp_path / name)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.startswith(str(tmp_path / name)), (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (name, proc.stderr)


@pytest.mark.parametrize("old, new, words", [
    ("ssh_public_key_file: keys/fixture_key.pub", "ssh_public_key_file: keys/" + "a" * 5000 + ".pub",
     "vms[0].cloud_init.ssh_public_key_file: {d}/keys/aaa"),
    ("private_key_file: keys/fixture_key", "private_key_file: keys/" + "a" * 300,
     "cannot be looked at: File name too long"),
    ("ca_file: null", "ca_file: " + "b" * 5000, "proxmox.ca_file: {d}/bbb"),
    ("private_key_file: keys/fixture_key", "private_key_file: keys",
     "vms[0].ssh.private_key_file: {d}/keys is a directory, not a file"),
    ("ca_file: null", "ca_file: keys", "proxmox.ca_file: {d}/keys is a directory, not a file"),
    ("private_key_file: keys/fixture_key", "private_key_file: keys/fixture_key.pub",
     "vms[0].ssh.private_key_file: {d}/keys/fixture_key.pub is a public key, not the private key"),
    ("private_key_file: keys/fixture_key", 'private_key_file: "keys/a\\0b"',
     "vms[0].ssh.private_key_file: the path contains the control character U+0000"),
    ("ssh_public_key_file: keys/fixture_key.pub", "ssh_public_key_file: /dev/null",
     "ssh_public_key_file: /dev/null is not a regular file"),
])
def test_odd_key_and_ca_paths_are_one_line_each(tmp_path, old, new, words):
    [issue] = _issues(_variant(tmp_path, old, new))
    assert words.format(d=tmp_path) in issue


@pytest.mark.parametrize("old, new, expected", [
    ("    cores: 32", "    cores: 32\n    7: x", "{p}:31:5: vms[0].7: key 7 is not a name (YAML reads it as int)"),
    ("version: 1", "version: 1\ntrue: x", "{p}:4:1: true: key true is not a name (YAML reads it as bool)"),
    ("version: 1", "version: 1\n~: x", "{p}:4:1: ~: key ~ is not a name (YAML reads it as null)"),
    ("  node: pve", "  node: pve\n  1.5: x", "{p}:8:3: proxmox.1.5: key 1.5 is not a name (YAML reads it as float)"),
])
def test_keys_that_are_not_names_point_at_the_key(tmp_path, old, new, expected):
    path = _variant(tmp_path, old, new)
    [issue] = _issues(path)
    assert issue.startswith(expected.format(p=path))


def test_tab_indentation_says_to_use_spaces(tmp_path):
    path = _variant(tmp_path, "    cores: 32", "\tcores: 32")
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:30:1: YAML syntax error:")
    assert issue.endswith("(fix: indent with spaces: YAML does not allow tabs for indentation)")


def test_alias_chain_nesting_deeper_than_the_text_is_refused(tmp_path):
    # Every line is 2 levels deep as text, but a{i} expands to i + 1 nested lists: the tree checks
    # would recurse that deep.
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 430)]
    path = tmp_path / "c.yml"
    path.write_text("\n".join(lines) + "\n")
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:{MAX_DEPTH + 1}:6: aliases nest this value more than {MAX_DEPTH} levels deep")


def test_one_gpu_given_to_two_vms_is_refused(tmp_path):
    two = (GOOD.parent / "bad-duplicate-vmid.yml").read_text()
    head, sep, tail = two.partition("  - name: vm-llm-aimachine")
    path = tmp_path / "c.yml"
    path.write_text(head.replace('address: "0000:02:00"', 'address: "0000:01:00.0"') + sep
                    + tail.replace("vmid: 140", "vmid: 141", 1))
    (tmp_path / "keys").symlink_to(GOOD.parent / "keys")
    assert _issues(path) == [
        f"{path}:76:16: vms[1].gpu.address: GPU address 0000:01:00 is also given to vms[0] 'vm-llm-second' (line 44) "
        "(expected a GPU of its own for each VM; fix: give each VM its own GPU; PVE starts only one VM holding a "
        "PCI device)"]
