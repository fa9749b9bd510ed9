"""The single-file binary (`make test-binary`): build dist/flowfuse, start it over an empty data directory, create a
flow through the API, trigger it by webhook and read the execution back. Also checks the release artefacts beside it
(checksum, CycloneDX SBOM) and that packaging/install.sh installs it into a fake root.

Prints the binary's size and its start-up time to the first 200 on /readyz (reported, not asserted).
Set FLOWFUSE_BINARY to test an already-built binary instead of building one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.api_helpers import ADMIN, PASSWORD, Client  # noqa: E402
from tests.conftest import FAST_ENV, free_port, poll  # noqa: E402

pytestmark = pytest.mark.timeout(1800)  # the build alone takes minutes

HOOK_FLOW = {"name": "orders", "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "orders", "respond": "immediately"}},
    {"id": "double", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}}],
    "edges": [{"from": "hook", "to": "double"}]}


@pytest.fixture(scope="module")
def binary() -> Path:
    given = os.environ.get("FLOWFUSE_BINARY")
    if given:
        return Path(given)
    built = subprocess.run(["bash", str(ROOT / "packaging" / "build.sh"), sys.executable], cwd=ROOT,
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return ROOT / "dist" / "flowfuse"


def run(binary: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # An empty PATH apart from the system's: the binary needs no Python, venv or checkout
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "FLOWFUSE_CONFIG": "", **(env or {})}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=clean, cwd=cwd, timeout=120)


def test_version(binary, tmp_path):
    shown = run(binary, "--version", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("flowfuse ") and lines[1].startswith("commit ") and lines[2].startswith("built ")
    assert "unknown" not in lines[2]  # the build date is written into the binary
    print(f"\n{shown.stdout.strip()}")


def test_release_artefacts_beside_the_binary(binary):
    checksum = (binary.parent / "flowfuse.sha256").read_text().split()
    assert checksum == [hashlib.sha256(binary.read_bytes()).hexdigest(), "flowfuse"]
    sbom = json.loads((binary.parent / "flowfuse.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"].lower() for c in sbom["components"]}
    assert {"litestar", "uvicorn", "huey", "cryptography", "jinja2"} <= names
    assert not names & {"pytest", "pyinstaller", "playwright"}  # build and test tools are not in the binary
    assert all(c.get("version") and c.get("purl") for c in sbom["components"] if c["name"] != "flowfuse")


def test_the_binary_serves_a_flow_end_to_end(binary, tmp_path):
    data = tmp_path / "data"
    made = run(binary, "init", "--data-dir", str(data), "--admin-email", ADMIN,
               env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD}, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr

    port = free_port()
    log = tmp_path / "serve.log"
    started = time.monotonic()
    proc = subprocess.Popen([str(binary), "serve", "--data-dir", str(data), "--port", str(port)], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "FLOWFUSE_CONFIG": "", **FAST_ENV},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert proc.poll() is None, f"flowfuse serve exited: {log.read_text()}"
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        poll(ready, timeout=90, what=lambda: f"/readyz 200 ({log.read_text()[-2000:]})", interval=0.05)
        startup = time.monotonic() - started
        print(f"\nbinary size: {binary.stat().st_size / 2**20:.1f} MiB; start to first /readyz 200: {startup:.2f} s")

        # children run as the binary itself (`flowfuse web`, `flowfuse worker`), not as a Python module
        out = subprocess.run(["ps", "-o", "args=", "--sid", str(proc.pid)], capture_output=True, text=True).stdout
        commands = [line.split() for line in out.splitlines()]
        assert any(c[:2] == [str(binary), "web"] for c in commands), out
        assert any(c[:2] == [str(binary), "worker"] for c in commands), out
        assert "-m appliance" not in out, out

        admin = Client(url)
        assert admin.sign_in(ADMIN).status_code == 201
        assert admin.post("/tenants/default/flows", json=HOOK_FLOW).status_code == 201
        assert admin.post("/tenants/default/flows/orders/activate").json()["active"] is True
        hook = httpx.post(f"{url}/hooks/default/orders", json={"n": 21}, timeout=10)
        assert hook.status_code in (200, 202), hook.text
        execution_id = hook.headers["x-flowfuse-execution"]
        done = poll(lambda: (r := admin.get(f"/tenants/default/executions/{execution_id}").json())["status"]
                    in ("succeeded", "failed") and r, timeout=30, what="the webhook's execution to finish")
        assert done["status"] == "succeeded", done
        assert [s["node"] for s in done["steps"]] == ["hook", "double"]
        assert done["output"] == [{"n": 21, "double": 42}]
        # the console's pages, templates and static assets come out of the binary
        assert httpx.get(url + "/static/vendor/redoc/redoc.standalone.js").status_code == 200
        assert httpx.get(url + "/api/docs").status_code == 200
        assert PASSWORD not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_install_sh_into_a_fake_root_is_idempotent(binary, tmp_path):
    root = tmp_path / "root"
    for attempt in range(2):
        done = subprocess.run(["bash", str(ROOT / "packaging" / "install.sh"), "--root", str(root),
                               "--binary", str(binary)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "systemctl enable --now flowfuse" in done.stdout  # the next step
    installed = root / "usr/local/bin/flowfuse"
    assert installed.read_bytes() == binary.read_bytes() and os.access(installed, os.X_OK)
    assert (root / "var/lib/flowfuse").is_dir() and (root / "var/lib/flowfuse").stat().st_mode & 0o077 == 0
    config = root / "etc/flowfuse/flowfuse.toml"
    assert config.read_text() == (ROOT / "flowfuse.toml").read_text()
    unit = (root / "etc/systemd/system/flowfuse.service").read_text()
    for line in ("NoNewPrivileges=true", "PrivateTmp=true", "ProtectSystem=strict", "ReadWritePaths=/var/lib/flowfuse",
                 "ProtectHome=true", "User=flowfuse", "ExecStart=/usr/local/bin/flowfuse serve"):
        assert line in unit.splitlines(), line
    users = [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("flowfuse:")]
    assert len(users) == 1 and users[0].endswith(":/var/lib/flowfuse:/usr/sbin/nologin")  # the system user, once
    # an edited flowfuse.toml survives a second install (upgrade = replace the binary)
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    again = subprocess.run(["bash", str(ROOT / "packaging" / "install.sh"), "--root", str(root), "--binary",
                            str(binary)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and config.read_text().endswith("# edited by the operator\n")
    # the installed binary runs from the fake root
    shown = run(installed, "--version")
    assert shown.returncode == 0 and shown.stdout.startswith("flowfuse ")
