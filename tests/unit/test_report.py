"""provisioners.report: run folders, the ``latest`` link, evidence attachments, redaction."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from provisioners import report
from provisioners.redact import _clear_for_tests, register_secret

SECRET = "s3cr3t-value-for-report-tests"
T0 = dt.datetime(2026, 11, 29, 17, 5, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def _secret():
    _clear_for_tests()
    register_secret(SECRET)
    yield
    _clear_for_tests()


def test_run_dir_is_utc_timestamp_and_latest_points_at_it(tmp_path):
    run = report.prepare_run_dir(tmp_path, now=T0)
    assert run.name == "20261129T170500Z"
    assert (run / "junit").is_dir()
    latest = tmp_path / "latest"
    assert latest.is_symlink() and latest.resolve() == run.resolve()


def test_two_runs_in_the_same_second_get_two_folders_and_latest_moves(tmp_path):
    first = report.prepare_run_dir(tmp_path, now=T0)
    second = report.prepare_run_dir(tmp_path, now=T0)
    assert first != second and second.name == "20261129T170500Z-2"
    assert (tmp_path / "latest").resolve() == second.resolve()
    local = dt.datetime(2026, 11, 29, 18, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert report.prepare_run_dir(tmp_path, now=local).name == "20261129T170500Z-3"


def test_a_real_latest_folder_is_never_replaced(tmp_path):
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "keep.txt").write_text("mine")
    with pytest.raises(OSError, match="real folder"):
        report.prepare_run_dir(tmp_path, now=T0)
    assert (tmp_path / "latest" / "keep.txt").read_text() == "mine"


def test_latest_index_and_main(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(report.REPORTS_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError):
        report.latest_index()
    assert report.main() == 1
    run = report.prepare_run_dir(now=T0)
    (run / "index.html").write_text("<html></html>")
    assert report.main() == 0
    assert capsys.readouterr().out.strip() == str((run / "index.html").resolve())


class JsonLike:
    """Has behave's JSON formatter ``embedding(mime, bytes)`` signature."""

    def __init__(self):
        self.embedded = []

    def embedding(self, mime, data):
        assert isinstance(data, bytes)
        self.embedded.append((mime, data))


class HtmlLike:
    """Has behave-html-pretty-formatter's ``embed(mime, data, caption=...)`` signature."""

    def __init__(self):
        self.embedded = []

    def embed(self, mime_type, data, caption=None, fail_only=False, **kw):
        self.embedded.append((mime_type, data, caption))


class Ctx:
    def __init__(self, *formatters):
        self._runner = type("R", (), {"formatters": list(formatters)})()


def test_attach_reaches_every_format_redacted(capsys):
    js, html = JsonLike(), HtmlLike()
    out = report.attach(Ctx(js, html), "nvidia-smi", f"GPU 0 token={SECRET}", "text/plain")
    assert SECRET not in out and "***" in out
    (mime, data), = js.embedded
    assert mime == "text/plain" and data.decode() == "nvidia-smi\nGPU 0 token=***"
    assert html.embedded == [("text/plain", "GPU 0 token=***", "nvidia-smi")]
    printed = capsys.readouterr().out
    assert "evidence: nvidia-smi" in printed and SECRET not in printed


def test_attach_json_mime_goes_to_html_as_text():
    html = HtmlLike()
    report.attach(Ctx(html), "models", '{"data": []}', "application/json")
    assert html.embedded[0][0] == "text/plain"


def test_attach_never_lets_html_pretty_read_a_file_named_by_the_text(tmp_path):
    # html-pretty replaces a short string naming an existing file with the file's content.
    secret_file = tmp_path / "id_ed25519"
    secret_file.write_text("PRIVATE KEY")
    html = HtmlLike()
    report.attach(Ctx(html), "path", str(secret_file))
    data = html.embedded[0][1]
    assert not Path(data).is_file()
    assert data.strip() == str(secret_file)


def test_attach_outside_a_step_does_not_break_the_run():
    class Broken(JsonLike):
        def embedding(self, mime, data):
            raise IndexError("no current step")

    html = HtmlLike()
    report.attach(Ctx(Broken(), html), "late", "text")
    assert html.embedded


def test_redacting_stream_and_wrapping_formatters():
    class Printer:
        def __init__(self, stream):
            self.stream = stream

    class Formatter:
        def __init__(self, stream):
            self.stream = stream
            self.printer = Printer(stream)

    buf = io.StringIO()
    f = Formatter(buf)
    assert report.wrap_formatter_streams([f]) == 1
    assert report.wrap_formatter_streams([f]) == 0  # already wrapped
    f.stream.write(f"error: {SECRET}\n")
    f.printer.stream.write(f"captured {SECRET}\n")
    assert SECRET not in buf.getvalue()
    assert buf.getvalue().count("***") == 2
    assert f.stream.wrapped is buf


def test_redact_tree_rewrites_only_files_with_secrets(tmp_path):
    (tmp_path / "junit").mkdir()
    leaky = tmp_path / "junit" / "TESTS-x.xml"
    leaky.write_text(f"<system-out>{SECRET}</system-out>")
    clean = tmp_path / "behave.json"
    clean.write_text("{}")
    (tmp_path / "link").symlink_to(leaky)
    changed = report.redact_tree(tmp_path)
    assert changed == [leaky]
    assert SECRET not in leaky.read_text() and "***" in leaky.read_text()
    assert report.redact_tree(tmp_path / "missing") == []


def test_junit_directory_is_pinned_to_this_run(tmp_path):
    class Config:
        junit_directory = str(tmp_path / "latest" / "junit")

    run = report.prepare_run_dir(tmp_path, now=T0)
    config = Config()
    assert report.pin_junit_directory(config, run, root=tmp_path) is True
    assert config.junit_directory == str(run / "junit")
    report.prepare_run_dir(tmp_path, now=T0)  # another run moves latest
    assert config.junit_directory == str(run / "junit")
    explicit = Config()
    explicit.junit_directory = str(tmp_path / "elsewhere")
    assert report.pin_junit_directory(explicit, run, root=tmp_path) is False
    assert explicit.junit_directory == str(tmp_path / "elsewhere")
