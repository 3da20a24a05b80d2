"""packaging/: the systemd unit passes `systemd-analyze verify` with no warning and keeps
its hardening; the Containerfile copies files that exist, enough for `pip install .`, and
runs the relay as a non-root user."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "snirelay.service"
CONTAINERFILE = ROOT / "packaging" / "Containerfile"
INSTALLED = "/usr/local/bin/snirelay"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """section -> key -> every value assigned, in order (systemd allows repeated keys;
    an empty assignment resets the list). Comments and trailing-backslash continuations
    as systemd reads them."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical: list[str] = []
    for raw in text.splitlines():
        if not logical and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            logical.append(raw[:-1])
            continue
        line = " ".join([*logical, raw]).strip()
        logical = []
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def relay_binary() -> str:
    """The `snirelay` script of the environment running the tests."""
    for candidate in (
        Path(sys.executable).parent / "snirelay",
        ROOT / ".venv" / "bin" / "snirelay",
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("snirelay")
    assert found, "no snirelay script installed (pip install -e .)"
    return found


def verifiable_copy(text: str, binary: str) -> str:
    """The unit with ExecStart's /usr/local/bin/snirelay replaced by `binary` (verify
    checks that the binary exists); asserts that nothing else changed."""
    copy = text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={binary} ")
    changed = [(a, b) for a, b in zip(text.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert len(changed) == 1, changed
    before, after = changed[0]
    assert before.startswith(f"ExecStart={INSTALLED} ")
    assert after == before.replace(INSTALLED, binary, 1)
    return copy


def verify(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    """`systemd-analyze verify` on `text` saved as snirelay.service: its exit code and
    the lines of its output that are about the unit."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "snirelay.service"
    path.write_text(text)
    # Works without systemd as PID 1 (it loads the unit in a manager of its own); an
    # inherited SYSTEMD_LOG_LEVEL must not hide the warnings, --man=no skips man pages.
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if "snirelay.service" in line]


def test_systemd_analyze_verify_passes_without_warnings(tmp_path: Path) -> None:
    copy = verifiable_copy(UNIT.read_text(), relay_binary())
    code, about_unit = verify(tmp_path, copy)
    assert about_unit == [], "\n".join(about_unit)
    assert code == 0


def test_verify_reports_an_unknown_key(tmp_path: Path) -> None:
    """The check above can fail: this systemd-analyze warns about a bad key (with exit 0
    in some versions), and the warning names the unit file."""
    copy = verifiable_copy(UNIT.read_text(), relay_binary())
    copy = copy.replace("[Service]\n", "[Service]\nNoSuchKey=1\n", 1)
    _, about_unit = verify(tmp_path, copy)
    assert any("NoSuchKey" in line for line in about_unit), about_unit


def test_parse_unit_repeated_keys_and_continuations() -> None:
    parsed = parse_unit("[S]\n# c\nA=1\nA=2\nB=x \\\n  y\nC=1\nC=\n")
    assert parsed == {"S": {"A": ["1", "2"], "B": ["x    y"], "C": []}}


def test_unit_runs_the_installed_relay_as_a_notify_service(unit: Unit) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED} -c /etc/snirelay/config.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    # drain_timeout (30 s) + the supervisor's grace before SIGKILL (5 s) fit in it
    assert int(service["TimeoutStopSec"][0]) > 30 + 5
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


HARDENING = {
    "DynamicUser": "yes",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "LimitNOFILE": "1048576",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "ReadOnlyPaths": "/etc/snirelay",
    "ConfigurationDirectory": "snirelay",
    "LogsDirectory": "snirelay",
}


@pytest.mark.parametrize("key", HARDENING)
def test_unit_hardening(unit: Unit, key: str) -> None:
    assert unit["Service"].get(key) == [HARDENING[key]]


def test_unit_shows_where_certificates_outside_etc_snirelay_go() -> None:
    assert re.search(r"^#\s*ReadOnlyPaths=/etc/letsencrypt$", UNIT.read_text(), re.M)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuations joined, comments out."""
    out: list[tuple[str, str]] = []
    logical: list[str] = []
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or (not logical and not raw.strip()):
            continue
        if raw.rstrip().endswith("\\"):
            logical.append(raw.rstrip()[:-1])
            continue
        line = " ".join([*logical, raw]).strip()
        logical = []
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not logical, "a continuation at the end of the file"
    return out


@pytest.fixture(scope="module")
def containerfile() -> list[tuple[str, str]]:
    return instructions(CONTAINERFILE.read_text())


def args_of(containerfile: list[tuple[str, str]], word: str) -> list[str]:
    return [args for w, args in containerfile if w == word]


def copy_sources(args: str) -> list[str]:
    """The sources of one COPY/ADD (shell or JSON form, --flags skipped)."""
    if args.startswith("["):
        parts: list[str] = json.loads(args)
    else:
        parts = args.split()
    parts = [p for p in parts if not p.startswith("--")]
    assert len(parts) >= 2, args
    return parts[:-1]


def test_containerfile_copies_what_exists_and_what_pip_install_needs(
    containerfile: list[tuple[str, str]],
) -> None:
    copies = args_of(containerfile, "COPY") + args_of(containerfile, "ADD")
    sources = [s for args in copies for s in copy_sources(args)]
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"not in the repository: {missing}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {
        "pyproject.toml",
        project["project"]["readme"],
        *project["tool"]["setuptools"]["packages"]["find"]["where"],
    }
    copied = {s.rstrip("/") for s in sources}
    assert "." in copied or needed <= copied, f"pip install . needs {sorted(needed - copied)}"
    assert any(re.search(r"pip install .*/src\b", a) for a in args_of(containerfile, "RUN"))
    assert not any("[dev]" in a for a in args_of(containerfile, "RUN")), "no dev extras"


def test_containerfile_base_is_debian_python_311_or_later(
    containerfile: list[tuple[str, str]],
) -> None:
    (base,) = args_of(containerfile, "FROM")
    m = re.fullmatch(r"python:3\.(\d+)-slim-(bookworm|trixie)", base)
    assert m and int(m[1]) >= 11, base


def test_containerfile_runs_the_relay_as_non_root(containerfile: list[tuple[str, str]]) -> None:
    assert args_of(containerfile, "ENTRYPOINT") == ['["snirelay"]']
    assert args_of(containerfile, "CMD") == ['["-c", "/etc/snirelay/config.toml"]']
    assert args_of(containerfile, "STOPSIGNAL") == ["SIGTERM"]
    users = args_of(containerfile, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_containerfile_healthcheck_uses_the_api_address() -> None:
    """Optional (commented out), but when it is there it asks [api]'s /healthz."""
    text = CONTAINERFILE.read_text()
    if "HEALTHCHECK" in text:
        assert "http://127.0.0.1:9090/healthz" in text
        assert '[api] listen = "127.0.0.1:9090"' in text
