"""Catalog loading: the shipped catalogs validate; every bad catalog gives one exact line."""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioners import redact as redaction
from provisioners.catalog import DEFAULT_CATALOG, CatalogError, CatalogIssue, load_catalog, parse_catalog
from provisioners.errors import DeployError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "catalogs"
LAB_CATALOG = REPO / "lab" / "lab-catalog.yml"


@pytest.fixture(autouse=True)
def _clean_secrets():
    redaction._clear_for_tests()
    yield
    redaction._clear_for_tests()


def _error_lines(name: str, **kwargs) -> list[str]:
    path = FIXTURES / name
    with pytest.raises(CatalogError) as info:
        load_catalog(path, **kwargs)
    return str(info.value).splitlines()


# ------------------------------------------------------------------ shipped catalogs


def test_default_catalog_is_the_repo_root_file():
    assert DEFAULT_CATALOG == REPO / "infrastructure-catalog.yml"


def test_shipped_catalog_validates_without_file_checks():
    cat = load_catalog(DEFAULT_CATALOG, check_files=False)
    vm = cat.vm("vm-llm-aimachine")
    assert cat.path == DEFAULT_CATALOG
    assert (vm.vmid, vm.cores, vm.memory_mib, vm.disk.size_gib) == (140, 32, 51200, 500)
    assert vm.gpu.address == "0000:01:00" and vm.gpu.expected.pci_id == "10de:2d04"
    assert vm.gpu.expected.memory_mib == 16311
    assert vm.ip == ipaddress.IPv4Interface("192.168.0.140/24")
    assert cat.network.gateway == ipaddress.IPv4Address("192.168.0.1")
    assert cat.image_for(vm).cloud_image.volid.startswith("local:import/")
    assert vm.stack.vllm.gpu_memory_utilization == 0.6
    assert vm.stack.cuda.version == "12.8"


def test_shipped_catalog_validates_with_the_operators_key(tmp_path, monkeypatch):
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    shutil.copy(FIXTURES / "keys" / "fixture_key.pub", ssh / "id_ed25519.pub")
    (ssh / "id_ed25519").write_text("placeholder\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    cat = load_catalog(DEFAULT_CATALOG)
    vm = cat.vms[0]
    assert vm.cloud_init.ssh_public_key_file == ssh / "id_ed25519.pub"
    assert vm.ssh.private_key_file == ssh / "id_ed25519"


def test_shipped_catalog_without_the_key_names_the_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CatalogError) as info:
        load_catalog(DEFAULT_CATALOG)
    paths = [i.path for i in info.value.issues]
    assert paths == ["vms[0].cloud_init.ssh_public_key_file", "vms[0].ssh.private_key_file"]
    assert f"{tmp_path}/.ssh/id_ed25519.pub does not exist" in str(info.value)


def test_lab_catalog_validates_without_lab_files():
    cat = load_catalog(LAB_CATALOG, check_files=False)
    vm = cat.vm(140)
    assert cat.proxmox.endpoint == "https://127.0.0.1:17006"
    assert (cat.proxmox.host, cat.proxmox.port) == ("127.0.0.1", 17006)
    assert cat.proxmox.ca_file == REPO / ".lab" / "pve" / "ca.pem"
    assert vm.cloud_init.ssh_public_key_file == REPO / ".lab" / "ssh" / "id_ed25519.pub"
    assert (vm.cores, vm.memory_mib, vm.disk.size_gib, vm.disk.storage) == (2, 1024, 8, "local-lvm")
    assert str(vm.ip) == "10.0.2.15/24" and vm.prefixlen == 24
    assert vm.ssh_host == "127.0.0.1" and vm.ssh.port == 17022
    assert vm.vllm_url == "http://127.0.0.1:17800"
    assert vm.ollama_url == "http://127.0.0.1:17434"
    assert vm.stack.apt_repositories[0].key_url == "http://10.0.2.2:17080/apt/lab-archive-key.asc"
    assert vm.stack.vllm.extra_index_url is None
    assert vm.stack.ollama.bind_host == "0.0.0.0" and vm.stack.ollama.bind_port == 11434


def test_lab_catalog_validates_fully_when_the_lab_files_exist(tmp_path):
    (tmp_path / "lab").mkdir()
    shutil.copy(LAB_CATALOG, tmp_path / "lab" / "lab-catalog.yml")
    (tmp_path / ".lab" / "pve").mkdir(parents=True)
    (tmp_path / ".lab" / "pve" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / ".lab" / "ssh").mkdir()
    shutil.copy(FIXTURES / "keys" / "fixture_key.pub", tmp_path / ".lab" / "ssh" / "id_ed25519.pub")
    (tmp_path / ".lab" / "ssh" / "id_ed25519").write_text("placeholder\n")
    cat = load_catalog(tmp_path / "lab" / "lab-catalog.yml")
    assert cat.proxmox.ca_file == tmp_path / ".lab" / "pve" / "ca.pem"


def test_lab_catalog_without_lab_files_fails_the_file_checks():
    if (REPO / ".lab" / "ssh" / "id_ed25519.pub").exists():
        pytest.skip("the lab is set up on this machine")
    with pytest.raises(CatalogError) as info:
        load_catalog(LAB_CATALOG)
    assert "vms[0].cloud_init.ssh_public_key_file" in [i.path for i in info.value.issues]


def test_yamllint_passes_on_both_catalogs():
    result = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(REPO / ".yamllint"),
                             str(DEFAULT_CATALOG), str(LAB_CATALOG)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_rejects_yes_and_long_lines(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("a: yes\nb: " + "x " * 70 + "\n")
    result = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(REPO / ".yamllint"),
                             str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "(truthy)" in result.stdout and "(line-length)" in result.stdout


def test_good_fixture_validates_with_file_checks():
    cat = load_catalog(FIXTURES / "good.yml")
    assert cat.vms[0].cloud_init.ssh_public_key_file == FIXTURES / "keys" / "fixture_key.pub"


# ---------------------------------------------------------------- bad catalogs: one line


def _line(name: str, rest: str) -> str:
    return f"{FIXTURES / name}:{rest}"


@pytest.mark.parametrize("name, expected", [
    ("bad-missing-field.yml",
     "28:5: vms[0].vmid: required key 'vmid' is missing "
     "(expected the VMID, an integer 100-999999999; fix: add 'vmid: ...' under vms[0])"),
    ("bad-pci-id.yml",
     '51:17: vms[0].gpu.expected.pci_id: "10de:2d0g" is not a PCI vendor:device id '
     '(expected PCI "vendor:device" in hex, e.g. "10de:2d04" (RTX 5060 Ti); '
     "fix: copy the [vvvv:dddd] pair from `lspci -nn` on the PVE host)"),
    ("bad-duplicate-vmid.yml",
     "57:11: vms[1].vmid: VMID 140 is used twice (also vms[0] 'vm-llm-second', line 29) "
     "(expected a VMID unique in the catalog; fix: give each VM its own VMID)"),
    ("bad-ip-outside-subnet.yml",
     "37:9: vms[0].ip: 192.168.1.140/24 is outside network.subnet 192.168.0.0/24 "
     "(expected an address inside 192.168.0.0/24, e.g. 192.168.0.140/24; fix: fix the VM ip or network.subnet)"),
    ("bad-yaml-syntax.yml",
     "35:6: YAML syntax error: while parsing a block mapping expected <block end>, but found "
     "'<block mapping start>' (fix: see the YAML around this position (indentation, quotes, ':'))"),
    ("bad-duplicate-key.yml",
     "31:5: vms[0].cores: duplicate key 'cores' (first at line 30) "
     "(expected each key once per mapping; fix: remove one of them; YAML would silently keep only the last)"),
    ("bad-memory-50gb.yml",
     '31:17: vms[0].memory_mib: "50GB" is not an integer '
     "(expected an integer number of MiB; fix: memory_mib is an integer in MiB; 50 GiB = 51200)"),
    ("bad-secret.yml",
     "8:3: proxmox.password: 'password' looks like a secret; secrets never live in the catalog "
     "(expected no credentials in this file; fix: delete the key and export PROXMOX_PASSWORD "
     "(or put PROXMOX_PASSWORD=... in the 0600 file named by DEPLOYER_SECRETS_FILE))"),
    ("bad-unknown-key.yml",
     "31:5: vms[0].memroy_mib: unknown key 'memroy_mib' (expected one of: cloud_init, cores, disk, "
     "efidisk_storage, endpoints, gpu, image, ip, memory_mib, name, ssh, stack, vmid; "
     "fix: did you mean 'memory_mib'?)"),
])
def test_bad_catalog_gives_exactly_one_line(name, expected):
    assert _error_lines(name) == [_line(name, expected)]


@pytest.mark.parametrize("name, position, path, words", [
    ("bad-pci-address.yml", "48:16", "vms[0].gpu.address", 'fix: write "0000:01:00.0")'),
    ("bad-ip-is-gateway.yml", "37:9", "vms[0].ip", "192.168.0.1 is the gateway's address"),
    ("bad-gateway-outside-subnet.yml", "15:12", "network.gateway", "10.0.0.1 is outside the subnet 192.168.0.0/24"),
    ("bad-vmid-range.yml", "29:11", "vms[0].vmid", "99 is out of range: must be greater than or equal to 100"),
    ("bad-cores-zero.yml", "30:12", "vms[0].cores", "0 is out of range: must be greater than 0"),
    ("bad-volid.yml", "22:14", "images.ubuntu-24.04.cloud_image.volid", "is not a PVE volume ID"),
    ("bad-sha256.yml", "74:17", "vms[0].stack.ollama.sha256", '"abc123" is not a valid sha256'),
    ("bad-url.yml", "64:24", "vms[0].stack.vllm.pip_index_url", '"ftp://pypi.org/simple" is not a valid URL'),
    ("bad-bind.yml", "75:15", "vms[0].stack.ollama.bind", '"127.0.0.1" is not HOST:PORT'),
    ("bad-gpu-share.yml", "68:33", "vms[0].stack.vllm.gpu_memory_utilization", "1.5 is out of range"),
    ("bad-cuda-float.yml", "60:18", "vms[0].stack.cuda.version", 'fix: quote it: "12.8"'),
    ("bad-flavour.yml", "57:18", "vms[0].stack.driver.flavour", "must be 'open' or 'closed'"),
    ("bad-min-branch.yml", "58:21", "vms[0].stack.driver.min_branch", '"570-open" is not an integer'),
    ("bad-image-ref.yml", "36:12", "vms[0].image", "image 'ubuntu-22.04' is not defined"),
    ("bad-size-string.yml", "34:17", "vms[0].disk.size_gib", "size_gib is an integer in GiB; 500 GiB = 500"),
    ("bad-ssh-key-missing.yml", "40:28", "vms[0].cloud_init.ssh_public_key_file",
     f"{FIXTURES}/keys/missing.pub does not exist"),
    ("bad-ssh-key-not-openssh.yml", "40:28", "vms[0].cloud_init.ssh_public_key_file",
     "does not look like an OpenSSH public key"),
    ("bad-vram-budget.yml", "76:19", "vms[0].stack.ollama.vram_mib",
     "9787 MiB and Ollama's budget is 8192 MiB: 17979 MiB > the GPU's 16311 MiB"),
])
def test_other_bad_catalogs_point_at_the_line(name, position, path, words):
    lines = _error_lines(name)
    assert len(lines) == 1, lines
    assert lines[0].startswith(_line(name, f"{position}: {path}: ")), lines[0]
    assert words in lines[0]


def test_ssh_key_file_checks_can_be_skipped():
    cat = load_catalog(FIXTURES / "bad-ssh-key-missing.yml", check_files=False)
    assert cat.vms[0].cloud_init.ssh_public_key_file == FIXTURES / "keys" / "missing.pub"


def test_every_bad_fixture_has_a_test():
    tested = {p for p in (FIXTURES).glob("bad-*.yml")}
    source = Path(__file__).read_text()
    assert all(f'"{p.name}"' in source for p in tested), [p.name for p in tested if f'"{p.name}"' not in source]


# -------------------------------------------------------------------- details


GOOD = (FIXTURES / "good.yml").read_text()


def _parse_error(text: str, **kwargs) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, file=FIXTURES / "inline.yml", **kwargs)
    return info.value


def test_secret_value_is_never_shown_and_is_registered_for_redaction():
    err = _parse_error(GOOD.replace("  node: pve\n", "  node: pve\n  token_secret: s3cr3t-value-xyz\n"))
    assert "s3cr3t-value-xyz" not in str(err)
    assert "PROXMOX_TOKEN_SECRET" in str(err)
    assert redaction.redact("leaked s3cr3t-value-xyz") == "leaked ***"


@pytest.mark.parametrize("key, env", [("api_key", "VLLM_API_KEY"), ("hf_token", "HF_TOKEN"),
                                      ("password", "PROXMOX_PASSWORD"), ("secret", "PROXMOX_TOKEN_SECRET")])
def test_secret_keys_anywhere_point_at_their_environment_variable(key, env):
    text = GOOD.replace("        max_model_len: 4096\n", f"        max_model_len: 4096\n        {key}: abcdef\n")
    err = _parse_error(text)
    assert len(err.issues) == 1
    assert err.issues[0].path == f"vms[0].stack.vllm.{key}"
    assert f"export {env}" in err.issues[0].fix


def test_keys_that_merely_contain_secret_words_are_not_secrets():
    # max_model_len has no secret word; "tokenizer" is not "token".
    err = _parse_error(GOOD.replace("        max_model_len: 4096\n",
                                    "        max_model_len: 4096\n        tokenizer: x\n"))
    assert err.issues[0].message == "unknown key 'tokenizer'"


def test_url_with_credentials_is_refused_and_redacted():
    err = _parse_error(GOOD.replace("https://pypi.org/simple", "https://user:pw-1234567@pypi.org/simple"))
    assert err.issues[0].path == "vms[0].stack.vllm.pip_index_url"
    assert "pw-1234567" not in str(err)
    assert "password" in err.issues[0].message


def test_several_issues_are_listed_in_file_order():
    text = GOOD.replace("    cores: 32\n", "    cores: -1\n").replace('pci_id: "10de:2d04"', 'pci_id: "nvidia"')
    err = _parse_error(text)
    assert [(i.path, i.line) for i in err.issues] == [("vms[0].cores", 30), ("vms[0].gpu.expected.pci_id", 51)]
    assert len(str(err).splitlines()) == 2


def test_uppercase_pci_id_is_normalised():
    cat = parse_catalog(GOOD.replace('pci_id: "10de:2d04"', 'pci_id: "10DE:2D04"'), file=FIXTURES / "x.yml")
    assert cat.vms[0].gpu.expected.pci_id == "10de:2d04"


def test_pci_address_with_function_is_accepted():
    cat = parse_catalog(GOOD.replace('address: "0000:01:00"', 'address: "0000:01:00.0"'), file=FIXTURES / "x.yml")
    assert cat.vms[0].gpu.address == "0000:01:00.0"


def test_quoted_number_for_memory_gets_the_unquote_hint():
    err = _parse_error(GOOD.replace("memory_mib: 51200\n", 'memory_mib: "51200"\n'))
    assert err.issues[0].fix == "memory_mib is an integer in MiB; write it without quotes: 51200"


def test_boolean_is_not_an_integer():
    err = _parse_error(GOOD.replace("    cores: 32\n", "    cores: true\n"))
    assert err.issues[0].message == "True is not an integer"


def test_unquoted_digit_only_sha256_is_explained():
    zeros = "0" * 64
    err = _parse_error(GOOD.replace(f'sha256: "{zeros}"\n    iso', f"sha256: {zeros}\n    iso"))
    assert err.issues[0].path == "images.ubuntu-24.04.cloud_image.sha256"
    assert "read this value as a number" in err.issues[0].message
    assert err.issues[0].fix == "put the value in double quotes"


def test_ip_without_prefix_asks_for_one():
    err = _parse_error(GOOD.replace("ip: 192.168.0.140/24", "ip: 192.168.0.140"))
    assert err.issues[0].fix == "write it as 192.168.0.140/24 (the prefix of network.subnet)"


def test_ip_prefix_must_match_the_subnet():
    err = _parse_error(GOOD.replace("ip: 192.168.0.140/24", "ip: 192.168.0.140/16"))
    assert err.issues[0].fix == "write 192.168.0.140/24"


def test_ip_broadcast_address_is_refused():
    err = _parse_error(GOOD.replace("ip: 192.168.0.140/24", "ip: 192.168.0.255/24"))
    assert err.issues[0].message == "192.168.0.255 is the broadcast address of 192.168.0.0/24"


def test_missing_section_points_at_the_parent_and_names_it():
    text = GOOD.replace("network:\n  subnet: 192.168.0.0/24\n  gateway: 192.168.0.1\n  dns: [192.168.0.1]\n"
                        "  bridge: vmbr0\n", "")
    err = _parse_error(text)
    assert [(i.path, i.line, i.col) for i in err.issues] == [("network", 3, 1)]


def test_merge_keys_are_not_duplicates_and_lines_follow_the_override():
    text = GOOD.replace("    gpu:\n      mapping: rtx5060ti\n",
                        "    gpu:\n      <<: {mapping: rtx5060ti, address: \"0000:09:00\"}\n      mapping: rtx5060ti\n")
    cat = parse_catalog(text, file=FIXTURES / "x.yml")
    assert cat.vms[0].gpu.address == "0000:01:00"  # the explicit key wins over the merged one
    bad = text.replace('      address: "0000:01:00"\n', '      address: "zz"\n')
    err = _parse_error(bad)
    assert (err.issues[0].path, err.issues[0].line) == ("vms[0].gpu.address", 49)


@pytest.mark.parametrize("text, line, message", [
    ("", 1, "the catalog is empty"),
    ("# only a comment\n", 1, "the catalog is empty"),
    ("- a\n- b\n", 1, "the catalog is not a mapping"),
    ("version: 1\n---\nversion: 1\n", 2, "YAML syntax error"),
    ("key: \"unterminated\n", 2, "YAML syntax error"),
])
def test_odd_documents_give_one_issue(text, line, message):
    err = _parse_error(text)
    assert len(err.issues) == 1
    assert err.issues[0].line == line
    assert err.issues[0].message.startswith(message)


def test_missing_file_is_one_line_without_position(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "nope.yml")
    assert str(info.value).splitlines() == [
        f"{tmp_path}/nope.yml: catalog file not found "
        "(fix: check the path, or name another catalog (CATALOG=PATH / -D catalog=PATH))"]


def test_catalog_error_is_a_deploy_error():
    err = _parse_error("")
    assert isinstance(err, DeployError)


def test_relative_and_home_paths_are_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = GOOD.replace("ca_file: null", "ca_file: ~/pve-ca.pem").replace(
        "private_key_file: keys/fixture_key", "private_key_file: ../other/../keys/k")
    cat = parse_catalog(text, file=tmp_path / "sub" / "c.yml", check_files=False)
    assert cat.proxmox.ca_file == tmp_path / "home" / "pve-ca.pem"
    assert cat.vms[0].ssh.private_key_file == tmp_path / "keys" / "k"
    assert cat.vms[0].ssh.private_key_file.is_absolute()


def test_private_key_given_as_public_key_is_named_without_its_content(tmp_path):
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "fixture_key").write_text("x\n")
    (key_dir / "fixture_key.pub").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nQUJDREVG\n")
    with pytest.raises(CatalogError) as info:
        parse_catalog(GOOD, file=tmp_path / "c.yml")
    text = str(info.value)
    assert "is a private key, not a public key" in text and "QUJDREVG" not in text


def test_damaged_public_key_is_refused(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fixture_key").write_text("x\n")
    (tmp_path / "keys" / "fixture_key.pub").write_text("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== me\n")
    with pytest.raises(CatalogError) as info:
        parse_catalog(GOOD, file=tmp_path / "c.yml")
    assert "holds a damaged ssh-ed25519 key" in str(info.value)


def test_vm_lookup_by_name_or_vmid_and_unknown_lists_known():
    cat = load_catalog(FIXTURES / "good.yml", check_files=False)
    assert cat.vm("vm-llm-aimachine") is cat.vms[0]
    assert cat.vm(140) is cat.vms[0] and cat.vm("140") is cat.vms[0]
    with pytest.raises(DeployError) as info:
        cat.vm("vm-other")
    assert "vm-llm-aimachine (VMID 140)" in str(info.value)


def test_derived_endpoints_and_ssh_host():
    vm = load_catalog(FIXTURES / "good.yml", check_files=False).vms[0]
    assert vm.ssh_host == "192.168.0.140"
    assert vm.vllm_url == "http://192.168.0.140:8000"
    assert vm.ollama_url == "http://192.168.0.140:11434"
    assert vm.ip_address == ipaddress.IPv4Address("192.168.0.140") and vm.prefixlen == 24


def test_issue_format_without_position_or_hints():
    issue = CatalogIssue("a.b", 0, 0, "bad")
    assert issue.format("f.yml") == "f.yml: a.b: bad"
    assert CatalogIssue("", 3, 4, "bad", expected="x").format("f.yml") == "f.yml:3:4: bad (expected x)"


@pytest.mark.parametrize("value, fix", [("yes", "write true"), ("Off", "write false"), ("NO", "write false")])
def test_yaml11_booleans_are_refused(value, fix):
    err = _parse_error(GOOD.replace("verify_tls: true", f"verify_tls: {value}"))
    assert [(i.path, i.line, i.col, i.fix) for i in err.issues] == [("proxmox.verify_tls", 8, 15, fix)]


def test_empty_list_and_null_mapping_are_named():
    err = _parse_error(GOOD.replace("  dns: [192.168.0.1]", "  dns: []").replace("  ubuntu-24.04:\n",
                                                                                 "  ubuntu-24.04: null\n  x:\n"))
    assert [(i.path, i.message) for i in err.issues] == [
        ("network.dns", "has no entries"), ("images.ubuntu-24.04", "null is not a mapping")]
    assert err.issues[1].expected == "a mapping with keys cloud_image, iso"
